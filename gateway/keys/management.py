"""Key and membership management, shared by the admin API and the CLI.

Every change that a running gateway may have cached sends a NOTIFY in the same
transaction. The plaintext of a key exists only in the dict `create`/`rotate`
return.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.database import Conn
from gateway.keys import format as key_format
from gateway.keys.invalidation import notify_key, notify_user
from gateway.policy.scopes import Catalogue

Errors = list[tuple[str, str]]
RESOURCE_TYPES = ("organization", "project")
_KEY_FIELDS = (
    "id, user_id, name, scopes, display_prefix, created_at, expires_at, revoked_at, last_used_at"
)


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


@dataclass(frozen=True, slots=True)
class KeySpec:
    user_id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None


def parse_time(value: object) -> datetime:
    """An RFC 3339 timestamp with an offset; raises ValueError otherwise."""
    if not isinstance(value, str) or "T" not in value.upper():
        raise ValueError("must be an RFC 3339 timestamp")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("must carry a UTC offset")
    return parsed


def validate_key(body: dict[str, Any], catalogue: Catalogue, now: datetime) -> KeySpec | Errors:
    """Check a create request; returns the spec or one error per invalid field."""
    errors: Errors = [(name, "unknown field") for name in sorted(set(body) - _CREATE_FIELDS)]
    user_id, name, scopes = body.get("user_id"), body.get("name"), body.get("scopes")
    errors += _text("user_id", user_id, 200) + _text("name", name, 100)
    if not isinstance(scopes, list) or not scopes:
        errors.append(("scopes", "must be a non-empty list of scopes"))
    else:
        for i, scope in enumerate(scopes):
            if not isinstance(scope, str) or scope not in catalogue:
                errors.append((f"scopes[{i}]", f"unknown scope {scope!r}"))
    expires_at, expiry_errors = _expiry(body, now)
    errors += expiry_errors
    if errors:
        return errors
    assert isinstance(user_id, str) and isinstance(name, str) and isinstance(scopes, list)
    return KeySpec(user_id, name, list(dict.fromkeys(scopes)), expires_at)


_CREATE_FIELDS = frozenset({"user_id", "name", "scopes", "expires_in_days", "expires_at"})


def _text(field: str, value: object, limit: int) -> Errors:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        return [(field, f"must be a string of 1 to {limit} characters")]
    if not value.isprintable():
        # PostgreSQL text cannot hold NUL, and identities end up in HTTP headers.
        return [(field, "must not contain control characters")]
    return []


def validate_user_id(value: object) -> Errors:
    return _text("user_id", value, 200)


def _expiry(body: dict[str, Any], now: datetime) -> tuple[datetime | None, Errors]:
    days, at = body.get("expires_in_days"), body.get("expires_at")
    if days is not None and at is not None:
        return None, [("expires_at", "give expires_in_days or expires_at, not both")]
    if days is not None:
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
            return None, [("expires_in_days", "must be a whole number of days from 1 to 36500")]
        return now + timedelta(days=days), []
    if at is None:
        return None, []
    try:
        when = parse_time(at)
    except ValueError as exc:
        return None, [("expires_at", str(exc))]
    if when <= now:
        return None, [("expires_at", "must be in the future")]
    return when, []


def key_json(row: asyncpg.Record | dict[str, Any], now: datetime) -> dict[str, Any]:
    """A key as the API shows it: never the secret, never the hash."""
    revoked, expires = row["revoked_at"], row["expires_at"]
    status = "active"
    if revoked is not None and revoked <= now:
        status = "revoked"
    elif expires is not None and expires <= now:
        status = "expired"
    return {
        "id": str(row["id"]),
        "user_id": row["user_id"],
        "name": row["name"],
        "scopes": list(row["scopes"]),
        "display_prefix": row["display_prefix"],
        "status": status,
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(expires),
        "revoked_at": _iso(revoked),
        "last_used_at": _iso(row["last_used_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


async def create_key(conn: Conn, spec: KeySpec, prefix: str) -> dict[str, Any]:
    secret = key_format.generate(prefix)
    row = await conn.fetchrow(
        f"INSERT INTO api_keys (id, key_hash, display_prefix, user_id, name, scopes, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_KEY_FIELDS}",
        uuid.uuid4(),
        key_format.digest(secret),
        key_format.display_prefix(secret),
        spec.user_id,
        spec.name,
        spec.scopes,
        spec.expires_at,
    )
    assert row is not None
    return {**key_json(row, datetime.now(UTC)), "key": secret}


async def list_keys(conn: Conn, user_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {_KEY_FIELDS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, id",
        user_id,
    )
    now = datetime.now(UTC)
    return [key_json(row, now) for row in rows]


async def get_key(conn: Conn, key_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {_KEY_FIELDS} FROM api_keys WHERE id = $1",
        _uuid(key_id),
    )
    if row is None:
        raise NotFound(key_id)
    return key_json(row, datetime.now(UTC))


async def revoke_key(conn: Conn, key_id: str) -> None:
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = LEAST(COALESCE(revoked_at, now()), now())"
            " WHERE id = $1 RETURNING id, key_hash",
            _uuid(key_id),
        )
        if row is None:
            raise NotFound(key_id)
        await notify_key(conn, str(row["id"]), bytes(row["key_hash"]))


async def rotate_key(conn: Conn, key_id: str, grace_seconds: int, prefix: str) -> dict[str, Any]:
    """A new key with the same name, user and scopes; the old one ends after the grace."""
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT id, key_hash, user_id, name, scopes, expires_at, revoked_at"
            " FROM api_keys WHERE id = $1 FOR UPDATE",
            _uuid(key_id),
        )
        if old is None:
            raise NotFound(key_id)
        now = datetime.now(UTC)
        if (old["revoked_at"] is not None and old["revoked_at"] <= now) or (
            old["expires_at"] is not None and old["expires_at"] <= now
        ):
            raise Conflict("only an active key can be rotated")
        spec = KeySpec(old["user_id"], old["name"], list(old["scopes"]), old["expires_at"])
        created = await create_key(conn, spec, prefix)
        await conn.execute(
            "UPDATE api_keys SET rotated_to = $2,"
            " revoked_at = LEAST(COALESCE(revoked_at, 'infinity'),"
            " now() + make_interval(secs => $3))"
            " WHERE id = $1",
            old["id"],
            uuid.UUID(created["id"]),
            float(grace_seconds),
        )
        await notify_key(conn, str(old["id"]), bytes(old["key_hash"]))
    return created


async def set_membership(
    conn: Conn, user_id: str, resource_type: str, resource_id: str, *, member: bool
) -> None:
    async with conn.transaction():
        if member:
            await conn.execute(
                "INSERT INTO memberships (user_id, resource_type, resource_id)"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                user_id,
                resource_type,
                resource_id,
            )
        else:
            await conn.execute(
                "DELETE FROM memberships"
                " WHERE user_id = $1 AND resource_type = $2 AND resource_id = $3",
                user_id,
                resource_type,
                resource_id,
            )
        await notify_user(conn, user_id)


def validate_membership(body: dict[str, Any]) -> tuple[str, str, str] | Errors:
    errors: Errors = [
        (name, "unknown field")
        for name in sorted(set(body) - {"user_id", "resource_type", "resource_id"})
    ]
    errors += _text("user_id", body.get("user_id"), 200)
    errors += _text("resource_id", body.get("resource_id"), 200)
    if body.get("resource_type") not in RESOURCE_TYPES:
        errors.append(("resource_type", "must be organization or project"))
    if errors:
        return errors
    return body["user_id"], body["resource_type"], body["resource_id"]


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(value) from None
