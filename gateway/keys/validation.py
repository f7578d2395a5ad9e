"""What a key or membership change must look like: one error per invalid field.

Shared by the admin API, the CLI and the self-service API; nothing here touches
the database.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_network
from typing import Any

from gateway.credits.refill import Refill, check_credits, normal_credits
from gateway.foundation.timestamps import parse_time
from gateway.keys.principal import compact_json
from gateway.policy.scopes import Catalogue

Errors = list[tuple[str, str]]
RESOURCE_TYPES = ("organization", "project")
MAX_DESCRIPTION = 500
MAX_CIDRS = 100


@dataclass(frozen=True, slots=True)
class KeySpec:
    user_id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
    description: str | None = None
    enabled: bool = True
    allowed_cidrs: tuple[str, ...] = ()
    rate_limits: dict[str, dict[str, float]] | None = None
    credits: tuple[int, Refill | None] | None = None  # (remaining, refill); None: unlimited
    meta: dict[str, Any] | None = None  # given to upstreams (§21); set by admins only


def check_controls(body: dict[str, Any], key_limits: Collection[str] = ()) -> Errors:
    """`enabled`, `allowed_cidrs`, `rate_limits` and `credits` where given (creation and
    updates alike); `key_limits`: the names of the policy set's `by: key` limits."""
    errors: Errors = []
    if "enabled" in body and not isinstance(body["enabled"], bool):
        errors.append(("enabled", "must be true or false"))
    if "allowed_cidrs" in body:
        errors += _check_cidrs(body["allowed_cidrs"])
    if "rate_limits" in body:
        errors += _check_key_limits(body["rate_limits"], key_limits)
    if "meta" in body:
        errors += check_meta(body["meta"])
    if "credits" in body:
        errors += check_credits(body["credits"])
    return errors


MAX_META_BYTES = 2048


def check_meta(value: object) -> Errors:
    """A JSON object (or null: none) of at most 2 KiB as compact JSON."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [("meta", "must be a JSON object")]
    size = len(compact_json(value))
    if size > MAX_META_BYTES:
        return [("meta", f"must be at most {MAX_META_BYTES} bytes as JSON ({size} given)")]
    return []


def _check_key_limits(value: object, key_limits: Collection[str]) -> Errors:
    if not isinstance(value, dict):
        return [("rate_limits", "must be an object: limit name -> {limit, per_seconds, burst}")]
    errors: Errors = []
    for name, numbers in value.items():
        field = f"rate_limits.{name}"
        if name not in key_limits:
            errors.append((field, "not a `by: key` limit of the policy set"))
        elif not isinstance(numbers, dict) or set(numbers) - {"limit", "per_seconds", "burst"}:
            errors.append((field, "must be {limit, per_seconds, burst?}"))
        else:
            for part in ("limit", "per_seconds", "burst"):
                number = numbers.get(part, 1)  # burst defaults to the limit
                ok = whole_number(number) if part != "per_seconds" else _positive(number)
                if ok is None or ok <= 0:
                    errors.append((f"{field}.{part}", "must be a positive number"))
    return errors


def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def normal_key_limits(value: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Checked `rate_limits` as stored: every field present, burst defaulting to the limit."""
    return {
        name: {
            "limit": int(n["limit"]),
            "per_seconds": float(n["per_seconds"]),
            "burst": int(n.get("burst", n["limit"])),
        }
        for name, n in value.items()
    }


def _check_cidrs(value: object) -> Errors:
    if not isinstance(value, list) or len(value) > MAX_CIDRS:
        return [("allowed_cidrs", f"must be a list of at most {MAX_CIDRS} networks")]
    errors: Errors = []
    for index, cidr in enumerate(value):
        if not isinstance(cidr, str):
            errors.append((f"allowed_cidrs[{index}]", "must be a string"))
            continue
        try:
            ip_network(cidr)
        except ValueError as exc:
            # Host bits set is refused rather than masked: 10.0.0.1/8 is most likely a typo.
            errors.append((f"allowed_cidrs[{index}]", str(exc)))
    return errors


def check_update(
    body: dict[str, Any], fields: tuple[str, ...], key_limits: Collection[str] = ()
) -> Errors:
    """A change of any of `fields` (name, description and the controls)."""
    errors: Errors = [(f, "unknown field") for f in sorted(set(body) - set(fields))]
    if "name" in body:
        errors += check_name(body["name"])
    errors += check_description(body.get("description"))
    return errors + check_controls(body, key_limits)


def normal_cidrs(value: list[str]) -> tuple[str, ...]:
    """The networks as PostgreSQL will show them (`10.0.0.0/8`, `2001:db8::/32`), once each."""
    return tuple(dict.fromkeys(str(ip_network(cidr)) for cidr in value))


def validate_key(
    body: dict[str, Any], catalogue: Catalogue, now: datetime, key_limits: Collection[str] = ()
) -> KeySpec | Errors:
    """Check a create request; returns the spec or one error per invalid field."""
    errors: Errors = [(name, "unknown field") for name in sorted(set(body) - _CREATE_FIELDS)]
    user_id, name, scopes = body.get("user_id"), body.get("name"), body.get("scopes")
    errors += _text("user_id", user_id, 200) + _text("name", name, 100)
    errors += check_description(body.get("description"))
    errors += check_scopes(scopes, catalogue.names)
    expires_at, expiry_errors = expiry(body, now)
    errors += expiry_errors + check_controls(body, key_limits)
    if errors:
        return errors
    assert isinstance(user_id, str) and isinstance(name, str) and isinstance(scopes, list)
    return KeySpec(
        user_id,
        name,
        list(dict.fromkeys(scopes)),
        expires_at,
        body.get("description") or None,
        body.get("enabled", True),
        normal_cidrs(body.get("allowed_cidrs", [])),
        normal_key_limits(body.get("rate_limits", {})),
        None if body.get("credits") is None else normal_credits(body["credits"]),
        body.get("meta"),
    )


_CREATE_FIELDS = frozenset(
    {
        "user_id",
        "name",
        "description",
        "scopes",
        "expires_in_days",
        "expires_at",
        "enabled",
        "allowed_cidrs",
        "rate_limits",
        "credits",
        "meta",
    }
)


def whole_number(value: object) -> int | None:
    """An int, or a float with no fraction (JSON Schema's `integer` admits 3.0); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_scopes(scopes: object, allowed: frozenset[str]) -> Errors:
    """A non-empty list, each scope among `allowed`; one error per bad element."""
    if not isinstance(scopes, list) or not scopes:
        return [("scopes", "must be a non-empty list of scopes")]
    return [
        (f"scopes[{i}]", f"unknown scope {scope!r}" if isinstance(scope, str) else "not a string")
        for i, scope in enumerate(scopes)
        if not isinstance(scope, str) or scope not in allowed
    ]


def check_name(value: object) -> Errors:
    return _text("name", value, 100)


def check_description(value: object) -> Errors:
    """Optional: absent, null or a string of at most 500 printable characters ("" clears it)."""
    if value is None or value == "":
        return []
    return _text("description", value, MAX_DESCRIPTION)


def _text(field: str, value: object, limit: int) -> Errors:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        return [(field, f"must be a string of 1 to {limit} characters")]
    if not value.isprintable():
        # PostgreSQL text cannot hold NUL, and identities end up in HTTP headers.
        return [(field, "must not contain control characters")]
    return []


def validate_user_id(value: object) -> Errors:
    return _text("user_id", value, 200)


def expiry(body: dict[str, Any], now: datetime) -> tuple[datetime | None, Errors]:
    """`expires_in_days` or `expires_at` (neither: None, no expiry)."""
    days, at = body.get("expires_in_days"), body.get("expires_at")
    if days is not None and at is not None:
        return None, [("expires_at", "give expires_in_days or expires_at, not both")]
    if days is not None:
        count = whole_number(days)
        if count is None or not 1 <= count <= 36500:
            return None, [("expires_in_days", "must be a whole number of days from 1 to 36500")]
        return now + timedelta(days=count), []
    if at is None:
        return None, []
    try:
        when = parse_time(at)
    except ValueError as exc:
        return None, [("expires_at", str(exc))]
    if when <= now:
        return None, [("expires_at", "must be in the future")]
    return when, []


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
