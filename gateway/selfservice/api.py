"""The self-service API under `PATH/v1`: a signed-in person's own keys (§11).

Every lookup and change is scoped to the session's user: another user's key id
is a 404, exactly like an unknown one. Every response is `Cache-Control: no-store`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.audit.events import Actor
from gateway.credits import pools
from gateway.foundation.config import ScopeDef
from gateway.foundation.config import SelfService as Settings
from gateway.foundation.jsonbody import MAX_BODY, json_reply, parse_object
from gateway.foundation.problems import Problem, invalid_fields
from gateway.foundation.timestamps import parse_time
from gateway.http1.messages import OwnedRequest, Reply
from gateway.keys import lifetime, management, networks
from gateway.keys.validation import (
    Errors,
    KeySpec,
    check_description,
    check_name,
    check_scopes,
    check_update,
    whole_number,
)
from gateway.selfservice.session import SessionUser
from gateway.usage.report import parse_range, recent_totals

NO_STORE = {"Cache-Control": "no-store"}
MAX_GRACE_SECONDS = 7 * 86400
_CREATE_FIELDS = frozenset(
    {"name", "description", "scopes", "expires_in_days", "expires_at", "never"}
)
# A blocked key (over the key policy's lifetime) is listed with the active ones: it may
# work again, and its owner is to see it and replace it.
_STATUSES = {"active": {"active", "rotating", "blocked"}, "inactive": {"expired", "revoked"}}


def _own(key: dict[str, Any]) -> dict[str, Any]:
    """A key as the page shows it: the admin API's shape without `user_id` and the
    admin's `meta` (which may hold what the owner is not to see: a plan, an account)."""
    return {name: value for name, value in key.items() if name not in ("user_id", "meta")}


def _not_found() -> Problem:
    return Problem(404, "key-not-found", "no such key")


class KeysApi:
    def __init__(
        self,
        settings: Settings,
        scopes: dict[str, ScopeDef],
        pool: asyncpg.Pool,
        key_prefix: str,
        max_lifetime_days: int | None = None,
    ) -> None:
        self._settings = settings
        self._max_days = max_lifetime_days  # the key policy's, over the page's own
        self._pool = pool
        self._prefix = key_prefix
        allowed = settings.allowed_scopes or list(scopes)
        self._allowed = frozenset(allowed)
        self._catalogue = [
            {"name": name, "description": scopes[name].description, "implies": scopes[name].implies}
            for name in allowed
        ]

    def session(self, user: SessionUser) -> Reply:
        return json_reply(
            {
                "user": {"id": user.id, "name": user.name},
                "scopes": self._catalogue,
                "expiry_days": self._offered(),
                "max_keys": self._settings.max_keys_per_user,
            },
            headers=NO_STORE,
        )

    def _offered(self) -> dict[str, Any]:
        """The expiries the page offers: the page's own, within the key policy's limit
        (`policy_max`, for the page to say why)."""
        days, limit = self._settings.expiry_days, self._max_days
        longest = days.max if limit is None else min(days.max, limit)
        return {
            "presets": [preset for preset in days.presets if preset <= longest],
            "default": min(days.default, longest),
            "max": longest,
            "allow_never": days.allow_never and limit is None,
            "policy_max": limit,
        }

    async def list(self, request: OwnedRequest, user: SessionUser) -> Reply:
        status = request.query.get("status", "active")
        if status not in ("active", "inactive", "all"):
            raise invalid_fields([("status", "must be active, inactive or all")])
        async with self._pool.acquire() as conn:
            keys = await management.list_keys(conn, user.id)
            totals = await recent_totals(conn, [key["id"] for key in keys])
            credits = await pools.get(conn, user.id)
        wanted = _STATUSES.get(status)
        marked = [lifetime.mark_blocked(key, self._max_days) for key in keys]
        shown = [
            {**_own(key), "requests_30_days": totals.get(key["id"], 0)}
            for key in marked
            if wanted is None or key["status"] in wanted
        ]
        # Newest first, as a settings page lists them.
        return json_reply({"keys": shown[::-1], "credits": credits}, headers=NO_STORE)

    async def create(self, request: OwnedRequest, user: SessionUser, actor: Actor) -> Reply:
        spec = self._creation(
            parse_object(await request.read_body(MAX_BODY)), user, datetime.now(UTC)
        )
        try:
            async with self._pool.acquire() as conn:
                limit = self._settings.max_keys_per_user
                created = await management.create_key_within_limit(
                    conn, spec, self._prefix, limit, actor=actor
                )
        except management.Conflict as exc:
            raise Problem(409, "too-many-keys", str(exc)) from None
        return json_reply(_own(created), 201, NO_STORE)

    async def usage(self, request: OwnedRequest, user: SessionUser, key_id: str) -> Reply:
        wanted = parse_range(request.query, datetime.now(UTC))
        if isinstance(wanted, list):
            raise invalid_fields(wanted)
        try:
            async with self._pool.acquire() as conn:
                found = await management.key_usage(conn, key_id, user.id, wanted)
        except management.NotFound:
            raise _not_found() from None
        return json_reply(found, headers=NO_STORE)

    async def networks(self, user: SessionUser, key_id: str) -> Reply:
        """The networks the person's key was used from in the last 30 days."""
        try:
            async with self._pool.acquire() as conn:
                await management.get_key(conn, key_id, user.id)
                found = await networks.recent(conn, key_id)
        except management.NotFound:
            raise _not_found() from None
        return json_reply({"networks": found}, headers=NO_STORE)

    async def update(
        self, request: OwnedRequest, user: SessionUser, key_id: str, actor: Actor
    ) -> Reply:
        body = parse_object(await request.read_body(MAX_BODY))
        # The owner renames, describes, disables and enables; networks are the admin's.
        errors = check_update(body, ("name", "description", "enabled"))
        if errors:
            raise invalid_fields(errors)
        try:
            async with self._pool.acquire() as conn:
                updated = await management.update_key(conn, key_id, user.id, body, actor=actor)
        except management.NotFound:
            raise _not_found() from None
        return json_reply(_own(lifetime.mark_blocked(updated, self._max_days)), headers=NO_STORE)

    async def rotate(
        self, request: OwnedRequest, user: SessionUser, key_id: str, actor: Actor
    ) -> Reply:
        body = parse_object(await request.read_body(MAX_BODY), empty_is_object=True)
        grace, expires_at = self._rotation(body, datetime.now(UTC))
        try:
            async with self._pool.acquire() as conn:
                created = await management.rotate_key(
                    conn,
                    key_id,
                    grace,
                    self._prefix,
                    actor=actor,
                    owner=user.id,
                    expires_at=expires_at,
                    max_lifetime_days=self._max_days,
                )
        except management.NotFound:
            raise _not_found() from None
        except management.Conflict as exc:
            raise Problem(409, "key-not-active", str(exc)) from None
        return json_reply(_own(created), 201, NO_STORE)

    async def revoke(self, user: SessionUser, key_id: str, actor: Actor) -> Reply:
        try:
            async with self._pool.acquire() as conn:
                await management.revoke_key(conn, key_id, owner=user.id, actor=actor)
        except management.NotFound:
            raise _not_found() from None
        return Reply(204, dict(NO_STORE))

    def _creation(self, body: dict[str, Any], user: SessionUser, now: datetime) -> KeySpec:
        errors: Errors = [(f, "unknown field") for f in sorted(set(body) - _CREATE_FIELDS)]
        name, scopes = body.get("name"), body.get("scopes")
        errors += check_name(name) + check_description(body.get("description"))
        errors += check_scopes(scopes, self._allowed)
        expires_at, expiry_errors = self._expiry(body, now)
        errors += expiry_errors
        if errors:
            raise invalid_fields(errors)
        assert isinstance(name, str) and isinstance(scopes, list)
        unique = list(dict.fromkeys(scopes))
        return KeySpec(user.id, name, unique, expires_at, body.get("description") or None)

    def _expiry(self, body: dict[str, Any], now: datetime) -> tuple[datetime | None, Errors]:
        """No expiry field → the default; beyond `max` days or a refused `never` → 422."""
        days = self._settings.expiry_days
        given = [f for f in ("expires_in_days", "expires_at") if body.get(f) is not None]
        never = body.get("never", False)
        if not isinstance(never, bool):
            return None, [("never", "must be true or false")]
        if len(given) + never > 1:
            return None, [("expires_at", "give one of expires_in_days, expires_at or never")]
        if never:
            if self._max_days is not None:
                raise lifetime.too_long(self._max_days)
            if not days.allow_never:
                return None, [("never", f"keys must expire within {days.max} days")]
            return None, []
        latest = now + timedelta(days=days.max)
        if "expires_at" in given:
            try:
                when = parse_time(body["expires_at"])
            except ValueError as exc:
                return None, [("expires_at", str(exc))]
            lifetime.check_new(when, now, self._max_days)
            if not now < when <= latest + timedelta(minutes=1):
                return None, [("expires_at", f"must be in the next {days.max} days")]
            return when, []
        count = whole_number(body.get("expires_in_days", min(days.default, self._offered()["max"])))
        if count is not None and count >= 1:
            lifetime.check_new(now + timedelta(days=count), now, self._max_days)
        if count is None or not 1 <= count <= days.max:
            return None, [("expires_in_days", f"must be a whole number from 1 to {days.max}")]
        return now + timedelta(days=count), []

    def _rotation(self, body: dict[str, Any], now: datetime) -> tuple[int, datetime | object]:
        errors: Errors = [
            (f, "unknown field") for f in sorted(set(body) - {"grace_seconds", "expires_in_days"})
        ]
        grace = whole_number(body.get("grace_seconds", 0))
        if grace is None or not 0 <= grace <= MAX_GRACE_SECONDS:
            errors.append(
                ("grace_seconds", f"must be a whole number from 0 to {MAX_GRACE_SECONDS}")
            )
        # The new key keeps the old one's expiry, as with the admin API and the CLI,
        # unless a fresh period is asked for.
        days = body.get("expires_in_days")
        expires_at: datetime | object = management.SAME_EXPIRY
        if days is not None:
            expires_at, expiry_errors = self._expiry({"expires_in_days": days}, now)
            errors += expiry_errors
        if errors:
            raise invalid_fields(errors)
        assert grace is not None
        return grace, expires_at
