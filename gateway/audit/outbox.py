"""The webhook outbox (§17): an event for every endpoint that wants it, written in the
transaction of the change that causes it, so an event exists exactly when its cause
was committed. Delivering is `webhooks.delivery`'s work, from any host."""

from __future__ import annotations

import json
from typing import Any

from gateway.foundation.database import INVALIDATION_CHANNEL, Conn

# What an endpoint may subscribe to (or "*").
EVENT_TYPES = (
    "key.created",
    "key.updated",
    "key.disabled",
    "key.enabled",
    "key.rotated",
    "key.revoked",
    "key.expiring",
    "key.expired",
    "key.leaked",
    "key.credits_low",
    "key.credits_exhausted",
    "key.new_network",
    "user.credits_low",
    "user.credits_exhausted",
    "membership.added",
    "membership.removed",
)

# The key's description as it is now (never its hash), under what the change said.
_ENQUEUE = """
WITH targets AS (
    SELECT id FROM webhook_endpoints WHERE $1 = ANY(events) OR '*' = ANY(events)
), event AS (
    INSERT INTO webhook_events (id, type, payload)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), $1,
           jsonb_build_object(
               'type', $1,
               'timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'data', coalesce((SELECT jsonb_build_object(
                           'key_id', k.id, 'user_id', k.user_id, 'name', k.name,
                           'display_prefix', k.display_prefix, 'scopes', k.scopes,
                           'expires_at', k.expires_at)
                         FROM api_keys AS k WHERE k.id = $3::uuid), '{}'::jsonb) || $2::jsonb
           )::text
     WHERE EXISTS (SELECT 1 FROM targets)
    RETURNING id
), delivered AS (
    INSERT INTO webhook_deliveries (event_id, endpoint_id)
    SELECT event.id, targets.id FROM event, targets
    RETURNING 1
)
SELECT count(*) FROM delivered, LATERAL (SELECT pg_notify($4, 'webhooks:')) AS told
"""


async def enqueue(conn: Conn, event_type: str, data: dict[str, Any], key_id: str | None) -> int:
    """Offer an event to the endpoints that want it; how many deliveries it made."""
    found = await conn.fetchval(
        _ENQUEUE, event_type, json.dumps(data, default=str), key_id, INVALIDATION_CHANNEL
    )
    return int(found or 0)
