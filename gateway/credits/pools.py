"""Credits of a user (§21): one balance that every key of the user without a balance of
its own spends, changed through the admin API and CLI and by scheduled refills.

The bookkeeping is a key's (`credits.balance`): `credits_remaining` is the part no
process holds, what processes hold (`user_credit_shares`) counts towards the balance
shown and towards a `set` or refill. Making or removing a pool changes what each of
the user's keys spends, so those keys are announced too: every process reloads them.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.credits.balance import credits_json
from gateway.credits.refill import normal_credits
from gateway.credits.shares import USERS
from gateway.foundation.database import INVALIDATION_CHANNEL as CHANNEL
from gateway.foundation.database import Conn

BALANCE = f"credits_remaining + {USERS.held('id')}"

_GET = f"SELECT id, {BALANCE} AS balance, credits_refill FROM user_credits WHERE user_id = $1"

# A new pool, or a new balance for one: what processes hold counts towards it.
_PUT = f"""
INSERT INTO user_credits AS p (user_id, credits_remaining, credits_refill, credits_refilled_at,
                               credits_basis)
VALUES ($1, $2, $3::jsonb, now(), $2)
ON CONFLICT (user_id) DO UPDATE
   SET credits_remaining = greatest(0, $2 - {USERS.held("p.id")}),
       credits_refill = $3::jsonb, credits_refilled_at = now(),
       credits_basis = $2, credits_alerted = 0
RETURNING p.id, p.credits_remaining + {USERS.held("p.id")} AS balance, p.credits_refill
"""

_CHANGE = f"""
UPDATE user_credits SET
    credits_remaining = CASE $2::text WHEN 'set' THEN greatest(0, $3::bigint - {USERS.held("id")})
                        WHEN 'increment' THEN credits_remaining + $3
                        ELSE greatest(0, credits_remaining - $3) END,
    credits_basis = CASE $2::text WHEN 'set' THEN $3::bigint ELSE credits_basis END,
    credits_alerted = CASE WHEN $2::text = 'set' THEN 0
                      WHEN $2::text = 'increment' AND credits_remaining + $3 > coalesce(credits_basis, 0) / 10
                      THEN 0 ELSE credits_alerted END
 WHERE user_id = $1
RETURNING id, {BALANCE} AS balance, credits_refill
"""

_REFILL = f"""
WITH due AS (
    SELECT id, gateway_last_refill(credits_refill, now()) AS at
      FROM user_credits
     WHERE credits_refill IS NOT NULL
       AND coalesce(credits_refilled_at, '-infinity') < gateway_last_refill(credits_refill, now())
), refilled AS (
    UPDATE user_credits AS p
       SET credits_remaining = greatest(0, (p.credits_refill ->> 'amount')::bigint - {USERS.held("p.id")}),
           credits_refilled_at = due.at,
           credits_basis = (p.credits_refill ->> 'amount')::bigint, credits_alerted = 0
      FROM due
     WHERE p.id = due.id AND coalesce(p.credits_refilled_at, '-infinity') < due.at
    RETURNING p.id, p.user_id, p.credits_refill, due.at
), audited AS (
    INSERT INTO audit_events (actor, action, user_id, details)
    SELECT 'system', 'user.refilled', user_id,
           jsonb_build_object('refill', credits_refill, 'scheduled_at', at)
      FROM refilled
    RETURNING user_id
)
SELECT count(*) FROM refilled, LATERAL (SELECT pg_notify($1, 'credits:' || refilled.id::text)) AS told
"""

# The user's keys are reloaded everywhere: whether they spend the pool changed.
_ANNOUNCE_KEYS = """
SELECT count(pg_notify($1, 'key:' || id::text || ':' || encode(key_hash, 'hex')))
  FROM api_keys WHERE user_id = $2
"""


class NoPool(Exception):
    """An increment or decrement for a user without a pool."""


async def get(conn: Conn, user_id: str) -> dict[str, Any] | None:
    """The user's `credits` as the API shows them; None: no pool."""
    row = await conn.fetchrow(_GET, user_id)
    return None if row is None else credits_json(row["balance"], row["credits_refill"])


async def put(
    conn: Conn, user_id: str, credits: dict[str, Any] | None, *, actor: Actor
) -> dict[str, Any] | None:
    """Make, replace (a checked `{remaining, refill}`) or remove (None) the user's pool;
    its `credits` after."""
    async with conn.transaction():
        if credits is None:
            removed = await conn.fetchval(
                "DELETE FROM user_credits WHERE user_id = $1 RETURNING id", user_id
            )
            shown = None
            pool_id = None if removed is None else str(removed)
        else:
            remaining, refill = normal_credits(credits)
            stored = None if refill is None else json.dumps(refill.as_json())
            row = await conn.fetchrow(_PUT, user_id, remaining, stored)
            assert row is not None
            shown = credits_json(row["balance"], row["credits_refill"])
            pool_id = str(row["id"])
        await audit.record(conn, actor, "user.credits", user_id=user_id, details={"credits": shown})
        await _announce(conn, user_id, pool_id, keys=True)
    return shown


async def change(
    conn: Conn, user_id: str, body: dict[str, Any], *, actor: Actor
) -> dict[str, Any] | None:
    """A checked `{"set": N | null}`, `{"increment": N}` or `{"decrement": N}`; the
    pool's `credits` after (None: removed). Raises `NoPool` for an increment or
    decrement of a user without one; a `set` makes one (and keeps a pool's refill)."""
    ((operation, value),) = body.items()
    if operation == "set" and (value is None or await get(conn, user_id) is None):
        return await put(
            conn, user_id, None if value is None else {"remaining": value}, actor=actor
        )
    async with conn.transaction():
        row = await conn.fetchrow(_CHANGE, user_id, operation, value)
        if row is None:
            raise NoPool(user_id)
        shown = credits_json(row["balance"], row["credits_refill"])
        await audit.record(
            conn, actor, "user.credits", user_id=user_id,
            details={operation: value, "credits": shown},
        )  # fmt: skip
        await _announce(conn, user_id, str(row["id"]), keys=False)
    return shown


async def refill_due(conn: Conn) -> int:
    """Refill every pool whose scheduled time has come (once, whoever runs it)."""
    return int(await conn.fetchval(_REFILL, CHANNEL) or 0)


async def _announce(conn: Conn, user_id: str, pool_id: str | None, *, keys: bool) -> None:
    if pool_id is not None:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"credits:{pool_id}")
    if keys:
        await conn.fetchval(_ANNOUNCE_KEYS, CHANNEL, user_id)
