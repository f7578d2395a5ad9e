"""Each organization's key policy (§21): the longest lifetime a key may have to reach
the organization's resources (routes whose `member_of` names it).

A key reaches every organization its user belongs to, so each sets its own bar: a key
over one organization's limit is refused there (403) and works everywhere else. The
limits live in PostgreSQL and in every process's memory: a change is sent with NOTIFY
(its value in the message, so no process asks the database per request), and the
whole set is read again whenever the listener may have missed messages.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.foundation.database import INVALIDATION_CHANNEL, UNAVAILABLE, Conn, bounded
from gateway.foundation.problems import Problem
from gateway.keys import lifetime

log = logging.getLogger("gateway.organizations")
MAX_DAYS = 36_500


class UnknownOrganization(Exception):
    """No membership names it and it has no policy."""


class OrganizationPolicies:
    """The limits of every organization that has one, as this process knows them."""

    def __init__(self) -> None:
        self._limits: dict[str, int] = {}
        self._reload: asyncio.Task[None] | None = None

    def limit(self, organization: str) -> int | None:
        return self._limits.get(organization)

    def check(self, organization: str, key_lifetime: float) -> None:
        """The 403 for a key whose lifetime (seconds) is over the organization's limit."""
        limit = self._limits.get(organization)
        if limit is not None and key_lifetime > limit * lifetime.DAY:
            raise Problem(
                403,
                lifetime.SLUG,
                f"this organization accepts keys that expire within {limit} days of their"
                " creation: create a new key",
                extra={"max_lifetime_days": limit},
            )

    async def load(self, pool: asyncpg.Pool, seconds: float = 5.0) -> None:
        rows = await bounded(
            pool,
            lambda conn: conn.fetch(
                "SELECT organization, max_lifetime_days FROM organization_key_policies"
            ),
            seconds,
        )
        self._limits = {row["organization"]: row["max_lifetime_days"] for row in rows}

    def changed(self, payload: str) -> None:
        """A NOTIFY's `DAYS:ORGANIZATION` (no days: the policy was cleared)."""
        days, _, organization = payload.partition(":")
        if days:
            self._limits[organization] = int(days)
        else:
            self._limits.pop(organization, None)

    def reload_soon(self, pool: asyncpg.Pool) -> None:
        """Read every limit again (the listener may have missed changes)."""
        if self._reload is None or self._reload.done():
            self._reload = asyncio.get_running_loop().create_task(self._load_logged(pool))

    async def _load_logged(self, pool: asyncpg.Pool) -> None:
        try:
            await self.load(pool)
        except UNAVAILABLE as exc:
            log.warning("organization key policies not reloaded: %s", exc.__class__.__name__)

    async def close(self) -> None:
        if self._reload is not None:
            self._reload.cancel()
            await asyncio.gather(self._reload, return_exceptions=True)


async def get_policy(conn: Conn, organization: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT max_lifetime_days, updated_at FROM organization_key_policies"
        " WHERE organization = $1",
        organization,
    )
    if row is None:
        await _known(conn, organization)
        return _json(organization, None, None)
    return _json(organization, row["max_lifetime_days"], row["updated_at"])


async def set_policy(
    conn: Conn, organization: str, days: int | None, *, actor: Actor
) -> dict[str, Any]:
    """Set (or, with None, clear) the limit; audited, and sent to every process."""
    async with conn.transaction():
        before = await conn.fetchval(
            "SELECT max_lifetime_days FROM organization_key_policies WHERE organization = $1"
            " FOR UPDATE",
            organization,
        )
        if before is None:
            await _known(conn, organization)
        if days is None:
            await conn.execute(
                "DELETE FROM organization_key_policies WHERE organization = $1", organization
            )
            updated_at = datetime.now(UTC)
        else:
            updated_at = await conn.fetchval(
                "INSERT INTO organization_key_policies (organization, max_lifetime_days)"
                " VALUES ($1, $2) ON CONFLICT (organization) DO UPDATE"
                " SET max_lifetime_days = EXCLUDED.max_lifetime_days, updated_at = now()"
                " RETURNING updated_at",
                organization,
                days,
            )
        if before != days:
            await audit.record(
                conn, actor, "organization.key_policy_updated", user_id=None,
                details={"organization": organization, "max_lifetime_days": days,
                         "previous_max_lifetime_days": before},
            )  # fmt: skip
            payload = f"orgpolicy:{'' if days is None else days}:{organization}"
            await conn.execute("SELECT pg_notify($1, $2)", INVALIDATION_CHANNEL, payload)
    return _json(organization, days, updated_at if days is not None else None)


def check_days(body: dict[str, Any]) -> list[tuple[str, str]]:
    errors = [(name, "unknown field") for name in sorted(set(body) - {"max_lifetime_days"})]
    if "max_lifetime_days" not in body:
        return [*errors, ("max_lifetime_days", "required (null clears the policy)")]
    days = body["max_lifetime_days"]
    if days is not None and (
        isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS
    ):
        errors.append(
            ("max_lifetime_days", f"must be a whole number from 1 to {MAX_DAYS}, or null")
        )
    return errors


async def _known(conn: Conn, organization: str) -> None:
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM memberships"
        " WHERE resource_type = 'organization' AND resource_id = $1)",
        organization,
    )
    if not found:
        raise UnknownOrganization(organization)


def _json(organization: str, days: int | None, updated_at: datetime | None) -> dict[str, Any]:
    return {
        "organization": organization,
        "max_lifetime_days": days,
        "updated_at": None if updated_at is None else updated_at.astimezone(UTC).isoformat(),
    }
