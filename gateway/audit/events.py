"""Recording and reading audit events (§14). Never a secret or a hash in `details`."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.audit.outbox import EVENT_TYPES, enqueue
from gateway.foundation.database import Conn
from gateway.foundation.timestamps import parse_time

ACTIONS = (
    "key.created",
    "key.updated",
    "key.rotated",
    "key.revoked",
    "key.disabled",
    "key.enabled",
    "key.credits",
    "key.refilled",
    "membership.added",
    "membership.removed",
    "webhook.created",
    "webhook.deleted",
    "webhook.secret_rotated",
    "organization.key_policy_updated",
    "key.new_network",
    "user.credits",
    "user.refilled",
)
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, and from where: `admin`, `cli`, `user:<id>` or `system`
    (the gateway itself: refills)."""

    name: str
    request_id: str | None = None
    ip: str | None = None


async def record(
    conn: Conn,
    actor: Actor,
    action: str,
    *,
    user_id: str | None,
    key_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one event, and offer it to webhook endpoints; call inside the change's
    transaction."""
    await conn.execute(
        "INSERT INTO audit_events (actor, action, user_id, key_id, details, request_id, ip)"
        " VALUES ($1, $2, $3, $4::uuid, $5::jsonb, $6, $7)",
        actor.name,
        action,
        user_id,
        key_id,
        json.dumps(details or {}, default=str),
        actor.request_id,
        actor.ip,
    )
    if action in EVENT_TYPES:
        data = {"user_id": user_id, "key_id": key_id, **(details or {}),
                "actor": actor.name, "request_id": actor.request_id}  # fmt: skip
        await enqueue(conn, action, data, key_id)


Errors = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Query:
    user_id: str | None = None
    key_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    limit: int = 100
    before_id: int | None = None  # from the cursor


def encode_cursor(event_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The event id a cursor continues after; ValueError when it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    prefix, _, number = text.partition(":")
    if prefix != "audit" or not number.isdigit():
        raise ValueError("not a cursor")
    return int(number)


async def query(conn: Conn, q: Query) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; a page and the cursor of the next one (None at the end). Paging by
    id keeps pages stable while new events arrive: they come before the first page."""
    rows = await conn.fetch(
        "SELECT id, at, actor, action, user_id, key_id::text AS key_id, details, request_id, ip"
        " FROM audit_events"
        " WHERE ($1::text IS NULL OR user_id = $1)"
        " AND ($2::uuid IS NULL OR key_id = $2::uuid)"
        " AND ($3::text IS NULL OR action = $3)"
        " AND ($4::timestamptz IS NULL OR at >= $4)"
        " AND ($5::bigint IS NULL OR id < $5)"
        " ORDER BY id DESC LIMIT $6",
        q.user_id,
        q.key_id,
        q.action,
        q.since,
        q.before_id,
        q.limit + 1,
    )
    page = [_event(row) for row in rows[: q.limit]]
    more = len(rows) > q.limit
    return page, encode_cursor(rows[q.limit - 1]["id"]) if more else None


def _event(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "at": row["at"].astimezone(UTC).isoformat(),
        "actor": row["actor"],
        "action": row["action"],
        "user_id": row["user_id"],
        "key_id": row["key_id"],
        "details": json.loads(row["details"]),
        "request_id": row["request_id"],
        "ip": row["ip"],
    }


def parse_query(params: Mapping[str, str]) -> Query | Errors:
    """The filters of `GET /admin/v1/audit` and `gateway audit`; one error per bad one."""
    errors: Errors = []
    known = {"user_id", "key_id", "action", "since", "limit", "cursor"}
    errors += [(name, "unknown parameter") for name in sorted(set(params) - known)]
    key_id = params.get("key_id")
    if key_id is not None:
        try:
            key_id = str(uuid.UUID(key_id))
        except ValueError:
            errors.append(("key_id", "must be a key id (UUID)"))
    action = params.get("action")
    if action is not None and action not in ACTIONS:
        errors.append(("action", f"must be one of {', '.join(ACTIONS)}"))
    since = None
    if params.get("since") is not None:
        try:
            since = parse_time(params["since"])
        except ValueError as exc:
            errors.append(("since", str(exc)))
    limit_text = params.get("limit", "100")
    limit = int(limit_text) if limit_text.isdigit() else 0
    if not 1 <= limit <= MAX_PAGE:
        errors.append(("limit", f"must be a whole number from 1 to {MAX_PAGE}"))
    before = None
    if params.get("cursor") is not None:
        try:
            before = decode_cursor(params["cursor"])
        except ValueError:
            errors.append(("cursor", "not a cursor from this API"))
    user_id = params.get("user_id")
    if errors:
        return errors
    return Query(user_id, key_id, action, since, limit, before)
