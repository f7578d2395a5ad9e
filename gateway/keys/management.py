"""Key and membership management, shared by the admin API and the CLI.

Every change that a running gateway may have cached sends a NOTIFY in the same
transaction. The plaintext of a key exists only in the dict `create`/`rotate`
return.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.audit import events as audit
from gateway.audit import outbox
from gateway.audit.events import Actor
from gateway.credits import balance
from gateway.credits.refill import normal_credits
from gateway.credits.shares import HELD
from gateway.foundation.database import Conn
from gateway.keys import format as key_format
from gateway.keys import lifetime
from gateway.keys.invalidation import notify_key, notify_user
from gateway.keys.principal import compact_json
from gateway.keys.validation import KeySpec, normal_cidrs, normal_key_limits
from gateway.usage.report import UsageRange, buckets, usage_json

_KEY_FIELDS = (
    "id, user_id, name, description, scopes, display_prefix, created_at, expires_at,"
    " revoked_at, last_used_at, last_used_address, enabled, allowed_cidrs, rate_limits,"
    f" {balance.BALANCE} AS credits_balance, credits_refill, meta"
)
# What `update_key` may change; all but the first two reach the request path (a NOTIFY).
UPDATABLE = ("name", "description", "enabled", "allowed_cidrs", "rate_limits", "credits", "meta")


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


def key_json(row: asyncpg.Record | dict[str, Any], now: datetime) -> dict[str, Any]:
    """A key as the API shows it: never the secret, never the hash."""
    revoked, expires = row["revoked_at"], row["expires_at"]
    status = "active"
    if revoked is not None and revoked <= now:
        status = "revoked"
    elif expires is not None and expires <= now:
        status = "expired"
    elif revoked is not None:
        status = "rotating"  # replaced, and working until the grace ends
    return {
        "id": str(row["id"]),
        "user_id": row["user_id"],
        "name": row["name"],
        "description": row["description"],
        "scopes": list(row["scopes"]),
        "display_prefix": row["display_prefix"],
        "status": status,
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(expires),
        "revoked_at": _iso(revoked),
        "grace_ends_at": _iso(revoked) if status == "rotating" else None,
        "last_used_at": _iso(row["last_used_at"]),
        "last_used_address": _address(row["last_used_address"]),
        "enabled": row["enabled"],
        "allowed_cidrs": [str(network) for network in row["allowed_cidrs"]],
        "rate_limits": _json_object(row["rate_limits"]),
        "credits": balance.credits_json(row["credits_balance"], row["credits_refill"]),
        "meta": None if row["meta"] is None else _json_object(row["meta"]),
    }


def _address(stored: object) -> str | None:
    return None if stored is None else str(stored)


def _json_object(stored: str | dict[str, Any]) -> dict[str, Any]:
    found = json.loads(stored) if isinstance(stored, str) else stored
    return dict(found)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


async def _insert_key(conn: Conn, spec: KeySpec, prefix: str) -> dict[str, Any]:
    secret = key_format.generate(prefix)
    remaining, refill = spec.credits or (None, None)
    row = await conn.fetchrow(
        "INSERT INTO api_keys (id, key_hash, display_prefix, user_id, name, scopes,"
        " expires_at, description, enabled, allowed_cidrs, rate_limits,"
        " credits_remaining, credits_refill, credits_refilled_at, credits_basis, meta)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::cidr[], $11::jsonb, $12, $13::jsonb,"
        " CASE WHEN $12::bigint IS NULL THEN NULL ELSE now() END, $12, $14::jsonb)"
        f" RETURNING {_KEY_FIELDS}",
        uuid.uuid4(),
        key_format.digest(secret),
        key_format.display_prefix(secret),
        spec.user_id,
        spec.name,
        spec.scopes,
        spec.expires_at,
        spec.description,
        spec.enabled,
        list(spec.allowed_cidrs),
        json.dumps(spec.rate_limits or {}),
        remaining,
        None if refill is None else json.dumps(refill.as_json()),
        None if spec.meta is None else compact_json(spec.meta).decode(),
    )
    assert row is not None
    return {**key_json(row, datetime.now(UTC)), "key": secret}


def _described(key: dict[str, Any]) -> dict[str, Any]:
    """What the audit trail keeps of a key: never its secret or hash."""
    described = (
        "name", "description", "scopes", "expires_at", "enabled", "allowed_cidrs", "rate_limits",
        "credits", "meta",
    )  # fmt: skip
    return {name: key[name] for name in described}


async def create_key(conn: Conn, spec: KeySpec, prefix: str, *, actor: Actor) -> dict[str, Any]:
    async with conn.transaction():
        created = await _insert_key(conn, spec, prefix)
        await audit.record(
            conn, actor, "key.created", user_id=spec.user_id, key_id=created["id"],
            details=_described(created),
        )  # fmt: skip
    return created


async def create_key_within_limit(
    conn: Conn, spec: KeySpec, prefix: str, max_active: int, *, actor: Actor
) -> dict[str, Any]:
    """`create_key` unless the user already has `max_active` active keys (`Conflict`).

    Concurrent creates for one user are serialised by a transaction-scoped
    advisory lock, so two requests cannot both pass the count."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _USER_LOCK, spec.user_id
        )
        active = await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE user_id = $1"
            " AND (revoked_at IS NULL OR revoked_at > now())"
            " AND (expires_at IS NULL OR expires_at > now())",
            spec.user_id,
        )
        if active >= max_active:
            raise Conflict(f"you already have {active} active keys, the most allowed")
        return await create_key(conn, spec, prefix, actor=actor)


_USER_LOCK = 0x6B65


async def page_of_keys(
    conn: Conn, user_id: str | None, limit: int, after: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, every user's or one user's; (keys, the cursor of the next page)."""
    rows = await conn.fetch(
        f"SELECT {_KEY_FIELDS} FROM api_keys WHERE ($1::text IS NULL OR user_id = $1)"
        " AND ($2::uuid IS NULL OR (created_at, id) <"
        " (SELECT created_at, id FROM api_keys WHERE id = $2::uuid))"
        " ORDER BY created_at DESC, id DESC LIMIT $3",
        user_id,
        None if after is None else _uuid(after),
        limit + 1,
    )
    now = datetime.now(UTC)
    keys = [key_json(row, now) for row in rows[:limit]]
    return keys, keys[-1]["id"] if len(rows) > limit else None


async def list_keys(conn: Conn, user_id: str) -> list[dict[str, Any]]:
    """A user's keys, newest first (as the page and `keys list` show them)."""
    rows = await conn.fetch(
        f"SELECT {_KEY_FIELDS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
        user_id,
    )
    now = datetime.now(UTC)
    return [key_json(row, now) for row in rows]


# `owner` (when given) scopes a lookup or change to that user's keys: another
# user's key is NotFound, exactly like an unknown id.
_OWNED = "id = $1 AND ($2::text IS NULL OR user_id = $2)"


async def get_key(conn: Conn, key_id: str, owner: str | None = None) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {_KEY_FIELDS} FROM api_keys WHERE {_OWNED}", _uuid(key_id), owner
    )
    if row is None:
        raise NotFound(key_id)
    return key_json(row, datetime.now(UTC))


async def update_key(
    conn: Conn, key_id: str, owner: str | None, changes: dict[str, Any], *, actor: Actor
) -> dict[str, Any]:
    """Set any of `UPDATABLE` (validated by the caller); returns the key.

    One audit event when something really changed, with the changed fields:
    `key.disabled` or `key.enabled` when `enabled` changed, else `key.updated`. A
    change the request path sees (`enabled`, `allowed_cidrs`) is sent to every
    process by NOTIFY, in the same transaction."""
    cidrs, limits = changes.get("allowed_cidrs"), changes.get("rate_limits")
    remaining, refill = (None, None)
    if changes.get("credits") is not None:
        remaining, refill = normal_credits(changes["credits"])
    async with conn.transaction():
        old = await conn.fetchrow(
            f"SELECT {_KEY_FIELDS}, key_hash FROM api_keys WHERE {_OWNED} FOR UPDATE",
            _uuid(key_id),
            owner,
        )
        if old is None:
            raise NotFound(key_id)
        if "credits" in changes and remaining is None:
            await conn.execute("DELETE FROM credit_shares WHERE key_id = $1", old["id"])
        # New credits replace the whole balance, what processes hold included.
        row = await conn.fetchrow(
            "UPDATE api_keys SET name = COALESCE($2, name),"
            " description = CASE WHEN $3 THEN $4 ELSE description END,"
            " enabled = COALESCE($5, enabled),"
            " allowed_cidrs = COALESCE($6::cidr[], allowed_cidrs),"
            " rate_limits = COALESCE($7::jsonb, rate_limits),"
            " credits_remaining = CASE WHEN NOT $8 THEN credits_remaining"
            " WHEN $9::bigint IS NULL THEN NULL"
            f" ELSE greatest(0, $9::bigint - {HELD.format('$1::uuid')}) END,"
            " credits_refill = CASE WHEN $8 THEN $10::jsonb ELSE credits_refill END,"
            " credits_refilled_at = CASE WHEN $8 THEN now() ELSE credits_refilled_at END,"
            " credits_basis = CASE WHEN $8 THEN $9::bigint ELSE credits_basis END,"
            " credits_alerted = CASE WHEN $8 THEN 0 ELSE credits_alerted END,"
            " meta = CASE WHEN $11 THEN $12::jsonb ELSE meta END"
            f" WHERE id = $1 RETURNING {_KEY_FIELDS}",
            old["id"],
            changes.get("name"),
            "description" in changes,
            changes.get("description") or None,
            changes.get("enabled"),
            None if cidrs is None else list(normal_cidrs(cidrs)),
            None if limits is None else json.dumps(normal_key_limits(limits)),
            "credits" in changes,
            remaining,
            None if refill is None else json.dumps(refill.as_json()),
            "meta" in changes,
            None if changes.get("meta") is None else compact_json(changes["meta"]).decode(),
        )
        now = datetime.now(UTC)
        assert row is not None
        before, updated = key_json(old, now), key_json(row, now)
        changed = {name: updated[name] for name in UPDATABLE if updated[name] != before[name]}
        if changed:
            action = "key.updated"
            if "enabled" in changed:
                action = "key.enabled" if updated["enabled"] else "key.disabled"
            await audit.record(
                conn, actor, action, user_id=updated["user_id"], key_id=updated["id"],
                details={"name": updated["name"], **changed},
            )  # fmt: skip
        if "credits" in changes:
            await balance.announce(conn, updated["id"], bytes(old["key_hash"]))
        elif set(changed) - {"name", "description"}:
            await notify_key(conn, updated["id"], bytes(old["key_hash"]))
    return updated


async def revoke_key(conn: Conn, key_id: str, owner: str | None = None, *, actor: Actor) -> None:
    """Revoke now (also a key in its rotation grace); a key already revoked stays as it was."""
    async with conn.transaction():
        old = await conn.fetchrow(
            f"SELECT id, key_hash, user_id, name, revoked_at FROM api_keys WHERE {_OWNED}"
            " FOR UPDATE",
            _uuid(key_id),
            owner,
        )
        if old is None:
            raise NotFound(key_id)
        if old["revoked_at"] is not None and old["revoked_at"] <= datetime.now(UTC):
            return
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", old["id"])
        await audit.record(
            conn, actor, "key.revoked", user_id=old["user_id"], key_id=str(old["id"]),
            details={"name": old["name"]},
        )  # fmt: skip
        await notify_key(conn, str(old["id"]), bytes(old["key_hash"]))


LEAK_ACTOR = Actor("leak:github")


async def revoke_leaked(conn: Conn, digest: bytes, url: str, source: str) -> bool:
    """Revoke the key with this hash, reported leaked (§17); whether it is one of ours
    (a key already revoked is, and nothing is written for it again)."""
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT id, key_hash, user_id, name, revoked_at FROM api_keys WHERE key_hash = $1"
            " FOR UPDATE",
            digest,
        )
        if old is None:
            return False
        if old["revoked_at"] is not None and old["revoked_at"] <= datetime.now(UTC):
            # Already revoked: a replayed report (the signature covers only the body)
            # or GitHub reporting it again. Ours, and nothing more to write.
            return True
        key_id, where = str(old["id"]), {"url": url, "source": source}
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", old["id"])
        await audit.record(
            conn, LEAK_ACTOR, "key.revoked", user_id=old["user_id"], key_id=key_id,
            details={"name": old["name"], **where},
        )  # fmt: skip
        await notify_key(conn, key_id, bytes(old["key_hash"]))
        data = {"user_id": old["user_id"], **where, "actor": LEAK_ACTOR.name}
        await outbox.enqueue(conn, "key.leaked", data, key_id)
    return True


SAME_EXPIRY = object()  # rotate_key: the new key expires when the old one would have


async def rotate_key(
    conn: Conn,
    key_id: str,
    grace_seconds: int,
    prefix: str,
    *,
    actor: Actor,
    owner: str | None = None,
    expires_at: datetime | object | None = SAME_EXPIRY,
    max_lifetime_days: int | None = None,
) -> dict[str, Any]:
    """A new key with the same name, description, user and scopes (and, unless
    `expires_at` is given, expiry); the old one ends after the grace. A new key's
    expiry past `max_lifetime_days` (the key policy) is refused."""
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT id, key_hash, user_id, name, description, scopes, expires_at, revoked_at,"
            " allowed_cidrs, rate_limits, meta"
            f" FROM api_keys WHERE {_OWNED} FOR UPDATE",
            _uuid(key_id),
            owner,
        )
        if old is None:
            raise NotFound(key_id)
        now = datetime.now(UTC)
        if (old["revoked_at"] is not None and old["revoked_at"] <= now) or (
            old["expires_at"] is not None and old["expires_at"] <= now
        ):
            raise Conflict("only an active key can be rotated")
        expiry = old["expires_at"] if expires_at is SAME_EXPIRY else expires_at
        assert expiry is None or isinstance(expiry, datetime)
        lifetime.check_new(expiry, now, max_lifetime_days)
        # The new key is what the old one was, controls and metadata included (a key
        # pinned to a network must not come back unpinned); its credits move below.
        spec = KeySpec(
            old["user_id"],
            old["name"],
            list(old["scopes"]),
            expiry,
            old["description"],
            allowed_cidrs=tuple(str(network) for network in old["allowed_cidrs"]),
            rate_limits=_json_object(old["rate_limits"]) or None,
            meta=None if old["meta"] is None else _json_object(old["meta"]),
        )
        created = await _insert_key(conn, spec, prefix)
        await conn.execute(
            "UPDATE api_keys SET rotated_to = $2,"
            " revoked_at = LEAST(COALESCE(revoked_at, 'infinity'),"
            " now() + make_interval(secs => $3))"
            " WHERE id = $1",
            old["id"],
            uuid.UUID(created["id"]),
            float(grace_seconds),
        )
        created["credits"] = await _move_credits(conn, old["id"], uuid.UUID(created["id"]))
        details = {
            **_described(created),
            "new_key_id": created["id"],
            "grace_seconds": grace_seconds,
        }
        await audit.record(
            conn, actor, "key.rotated", user_id=old["user_id"], key_id=str(old["id"]),
            details=details,
        )  # fmt: skip
        await notify_key(conn, str(old["id"]), bytes(old["key_hash"]))
    return created


async def change_credits(
    conn: Conn, key_id: str, body: dict[str, Any], *, actor: Actor
) -> dict[str, Any] | None:
    """Set, increment or decrement a key's balance (checked by `balance.check_change`);
    the key's `credits` after. `Conflict` for an increment or decrement of a key
    without credits."""
    try:
        credits = await balance.change(conn, _uuid(key_id), body, actor=actor)
    except balance.Unlimited:
        raise Conflict("the key has unlimited credits: set a balance first") from None
    except balance.NoSuchKey:
        raise NotFound(key_id) from None
    return credits


async def key_usage(
    conn: Conn, key_id: str, owner: str | None, wanted: UsageRange
) -> dict[str, Any]:
    """A key's usage buckets (§17); `owner` scopes it to that user's keys."""
    row = await conn.fetchrow(f"SELECT id FROM api_keys WHERE {_OWNED}", _uuid(key_id), owner)
    if row is None:
        raise NotFound(key_id)
    return usage_json(str(row["id"]), wanted, await buckets(conn, row["id"], wanted))


async def _move_credits(conn: Conn, old: uuid.UUID, new: uuid.UUID) -> dict[str, Any] | None:
    """The balance and refill follow a rotated key; requests with the old key during its
    grace spend from the new one's, and shares processes hold of the old key go back
    to the new one (`rotated_to`)."""
    row = await conn.fetchrow(
        "UPDATE api_keys AS n SET credits_remaining = o.credits_remaining,"
        " credits_refill = o.credits_refill, credits_refilled_at = o.credits_refilled_at,"
        " credits_basis = o.credits_basis, credits_alerted = o.credits_alerted"
        " FROM api_keys AS o WHERE n.id = $2 AND o.id = $1"
        f" RETURNING n.credits_remaining + {HELD.format('n.id')} AS credits_balance,"
        " n.credits_refill",
        old,
        new,
    )
    await conn.execute(
        "UPDATE api_keys SET credits_remaining = 0 WHERE id = $1 AND credits_remaining IS NOT NULL",
        old,
    )
    assert row is not None
    return balance.credits_json(row["credits_balance"], row["credits_refill"])


async def set_membership(
    conn: Conn,
    user_id: str,
    resource_type: str,
    resource_id: str,
    *,
    member: bool,
    actor: Actor,
) -> None:
    async with conn.transaction():
        if member:
            status = await conn.execute(
                "INSERT INTO memberships (user_id, resource_type, resource_id)"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                user_id,
                resource_type,
                resource_id,
            )
        else:
            status = await conn.execute(
                "DELETE FROM memberships"
                " WHERE user_id = $1 AND resource_type = $2 AND resource_id = $3",
                user_id,
                resource_type,
                resource_id,
            )
        if status.rsplit(" ", 1)[-1] != "0":  # only a real change is an event
            action = "membership.added" if member else "membership.removed"
            details = {"resource_type": resource_type, "resource_id": resource_id}
            await audit.record(conn, actor, action, user_id=user_id, details=details)
        await notify_user(conn, user_id)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(value) from None
