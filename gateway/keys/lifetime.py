"""Key lifetimes under a policy (§21): `key_policy.max_lifetime_days`, global.

A key's lifetime runs from its creation to its expiry (none: unbounded). New keys
must stay within the limit; a key made before a limit it exceeds is *blocked*, not
revoked: refused (401) and listed as `blocked` while the limit stands, working again
if the limit is raised or removed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gateway.foundation.problems import Problem
from gateway.foundation.timestamps import parse_time

SLUG = "key-lifetime-exceeds-policy"
DAY = 86_400.0


def exceeds(created_at: float, expires_at: float | None, limit_days: int | None) -> bool:
    """Whether a key's lifetime (epoch seconds) is over the limit."""
    if limit_days is None:
        return False
    return expires_at is None or expires_at - created_at > limit_days * DAY


def check_new(expires_at: datetime | None, now: datetime, limit_days: int | None) -> None:
    """Raise the 422 a key created (or rotated) now with this expiry gets, if any."""
    if limit_days is None:
        return
    if expires_at is None or expires_at > now + timedelta(days=limit_days, minutes=1):
        raise too_long(limit_days)


def too_long(limit_days: int) -> Problem:
    return Problem(
        422,
        SLUG,
        f"keys must expire within {limit_days} days of their creation"
        " (key_policy.max_lifetime_days): give an expiry within it",
        extra={"max_lifetime_days": limit_days},
    )


def blocked_detail(limit_days: int) -> str:
    return (
        f"this key's lifetime is over the {limit_days}-day limit of the key policy:"
        " create a new key"
    )


def mark_blocked(key: dict[str, Any], limit_days: int | None) -> dict[str, Any]:
    """A key as the APIs list it, `status: "blocked"` if it is usable but over the
    limit (an expired or revoked key stays what it is)."""
    if limit_days is None or key["status"] not in ("active", "rotating"):
        return key
    created = parse_time(key["created_at"]).timestamp()
    expires = key["expires_at"]
    if exceeds(created, None if expires is None else parse_time(expires).timestamp(), limit_days):
        return {**key, "status": "blocked"}
    return key
