"""Webhook endpoints and their deliveries, for the admin API and the CLI. The secret
(`whsec_` + base64 of 32 random bytes) is shown when an endpoint is made and when it
is rotated, and never in listings, logs or the audit trail."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.audit.outbox import EVENT_TYPES
from gateway.foundation.database import INVALIDATION_CHANNEL, Conn
from gateway.webhooks.destinations import Destinations, shown

Errors = list[tuple[str, str]]
ROTATION_GRACE_HOURS = 24
_FIELDS = "id, url, events, description, created_at, previous_until"
_DELIVERY_FIELDS = (
    "d.id, d.event_id, e.type, d.status, d.attempts, d.next_attempt_at, d.last_attempt_at,"
    " d.last_status, d.last_error, d.created_at"
)


class NotFound(Exception):
    pass


class DestinationNotAllowed(Exception):
    """A URL whose host is not a public address nor inside `webhooks.allowed_networks`."""


def check_endpoint(body: dict[str, Any]) -> Errors:
    errors: Errors = [
        (f, "unknown field") for f in sorted(set(body) - {"url", "events", "description"})
    ]
    url = body.get("url")
    if not isinstance(url, str) or not _is_http_url(url):
        errors.append(("url", "must be an http:// or https:// URL"))
    elif len(url) > 2000 or not url.isprintable():
        errors.append(("url", "must be at most 2000 printable characters"))
    events = body.get("events", ["*"])
    if not isinstance(events, list) or not events:
        errors.append(("events", 'must be a non-empty list of event types, or ["*"]'))
    else:
        errors += [
            (f"events[{i}]", f"unknown event type {event!r}")
            for i, event in enumerate(events)
            if event != "*" and event not in EVENT_TYPES
        ]
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 500):
        errors.append(("description", "must be a string of at most 500 characters"))
    return errors


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def endpoint_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "url": shown(row["url"]),
        "events": list(row["events"]),
        "description": row["description"],
        "created_at": _iso(row["created_at"]),
        "previous_secret_until": _iso(row["previous_until"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


async def create(
    conn: Conn, body: dict[str, Any], destinations: Destinations, *, actor: Actor
) -> dict[str, Any]:
    """A checked endpoint; the answer carries its secret, shown this once. Raises
    `DestinationNotAllowed` for a URL that may not be delivered to."""
    refusal = await destinations.refusal(body["url"])
    if refusal is not None:
        raise DestinationNotAllowed(refusal)
    secret = new_secret()
    async with conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoints (id, url, events, description, secret)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {_FIELDS}",
            uuid.uuid4(),
            body["url"],
            list(dict.fromkeys(body.get("events", ["*"]))),
            body.get("description"),
            secret,
        )
        assert row is not None
        created = endpoint_json(row)
        await _audit(conn, actor, "webhook.created", created)
    return {**created, "secret": secret}


async def _audit(conn: Conn, actor: Actor, action: str, endpoint: dict[str, Any]) -> None:
    details = {"webhook_id": endpoint["id"], "url": endpoint["url"], "events": endpoint["events"]}
    await audit.record(conn, actor, action, user_id=None, details=details)


async def listing(conn: Conn) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_FIELDS} FROM webhook_endpoints ORDER BY created_at DESC")
    return [endpoint_json(row) for row in rows]


async def get(conn: Conn, endpoint_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {_FIELDS} FROM webhook_endpoints WHERE id = $1", _uuid(endpoint_id)
    )
    if row is None:
        raise NotFound(endpoint_id)
    return endpoint_json(row)


async def delete(conn: Conn, endpoint_id: str, *, actor: Actor) -> None:
    """Gone with its pending deliveries."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"DELETE FROM webhook_endpoints WHERE id = $1 RETURNING {_FIELDS}", _uuid(endpoint_id)
        )
        if row is None:
            raise NotFound(endpoint_id)
        await _audit(conn, actor, "webhook.deleted", endpoint_json(row))


async def rotate_secret(conn: Conn, endpoint_id: str, *, actor: Actor) -> dict[str, Any]:
    """A new secret; the old one goes on signing beside it for 24 hours, so receivers
    can switch without losing a delivery."""
    secret = new_secret()
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,"
            " previous_until = now() + make_interval(hours => $3)"
            f" WHERE id = $1 RETURNING {_FIELDS}",
            _uuid(endpoint_id),
            secret,
            ROTATION_GRACE_HOURS,
        )
        if row is None:
            raise NotFound(endpoint_id)
        rotated = endpoint_json(row)
        await _audit(conn, actor, "webhook.secret_rotated", rotated)
    return {**rotated, "secret": secret}


def delivery_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "event_id": row["event_id"],
        "type": row["type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["status"] == "pending" else None,
        "last_attempt_at": _iso(row["last_attempt_at"]),
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "created_at": _iso(row["created_at"]),
    }


async def deliveries(conn: Conn, endpoint_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """An endpoint's deliveries, newest first."""
    await get(conn, endpoint_id)
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_FIELDS} FROM webhook_deliveries AS d"
        " JOIN webhook_events AS e ON e.id = d.event_id"
        " WHERE d.endpoint_id = $1 ORDER BY d.created_at DESC, d.id LIMIT $2",
        _uuid(endpoint_id),
        limit,
    )
    return [delivery_json(row) for row in rows]


async def retry(conn: Conn, delivery_id: str) -> dict[str, Any]:
    """Try a delivery again now, with a fresh retry schedule (a failed one too)."""
    row = await conn.fetchrow(
        "WITH again AS (UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
        " next_attempt_at = now() WHERE id = $1 RETURNING *)"
        f" SELECT {_DELIVERY_FIELDS} FROM again AS d JOIN webhook_events AS e ON e.id = d.event_id",
        _uuid(delivery_id),
    )
    if row is None:
        raise NotFound(delivery_id)
    await conn.execute("SELECT pg_notify($1, 'webhooks:')", INVALIDATION_CHANNEL)
    return delivery_json(row)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(value) from None
