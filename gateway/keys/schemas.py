"""JSON Schemas of a key as the admin and self-service APIs show it (their OpenAPI documents)."""

from __future__ import annotations

from typing import Any

_TIME = {"type": ["string", "null"], "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 10**15}
REFILL: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "remaining becomes amount (replacing, not adding) at 00:00 UTC every day,"
    " or on `day` of every month (the last day of a shorter month)",
    "required": ["interval", "amount"],
    "additionalProperties": False,
    "properties": {
        "interval": {"enum": ["day", "month"]},
        "amount": {**_COUNT, "minimum": 1},
        "day": {"type": "integer", "minimum": 1, "maximum": 31},
    },
}
CREDITS: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "null: unlimited. Each request spends its route's `cost`.",
    "additionalProperties": False,
    "properties": {"remaining": _COUNT, "refill": REFILL},
}
_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "user_id": {"type": "string", "minLength": 1, "maxLength": 200},
    "name": {"type": "string", "minLength": 1, "maxLength": 100},
    "description": {"type": ["string", "null"], "maxLength": 500},
    "scopes": {"type": "array", "items": {"type": "string"}},
    "display_prefix": {"type": "string"},
    # rotating: replaced by a rotation, still working until `grace_ends_at`; blocked: its
    # lifetime is over key_policy.max_lifetime_days (it works again if the limit is raised)
    "status": {"enum": ["active", "rotating", "blocked", "expired", "revoked"]},
    "grace_ends_at": _TIME,
    "created_at": {"type": "string", "format": "date-time"},
    "expires_at": _TIME,
    "revoked_at": _TIME,
    "last_used_at": _TIME,
    # the client address of the last use (after `trusted_proxies`), with `last_used_at`
    "last_used_address": {"type": ["string", "null"]},
    "enabled": {"type": "boolean"},
    "allowed_cidrs": {"type": "array", "items": {"type": "string"}},
    "rate_limits": {"type": "object"},
    "credits": {**CREDITS, "required": ["remaining", "refill"]},
    "meta": {
        "type": ["object", "null"],
        "description": "set by admins; given to upstreams as the identity JWT's `meta` claim"
        " and X-Gateway-Key-Meta (base64url of the JSON, no padding)",
    },
}
# Request fields of key controls (creation and PATCH).
CONTROLS: dict[str, Any] = {
    "enabled": {"type": "boolean"},
    "allowed_cidrs": {
        "type": "array",
        "maxItems": 100,
        "items": {"type": "string", "description": "an IPv4 or IPv6 network, e.g. 10.0.0.0/8"},
    },
    "rate_limits": {
        "type": "object",
        "description": "this key's numbers for named `by: key` limits of the policy set",
        "additionalProperties": {
            "type": "object",
            "required": ["limit", "per_seconds"],
            "additionalProperties": False,
            "properties": {
                "limit": {"type": "integer", "minimum": 1},
                "per_seconds": {"type": "number", "exclusiveMinimum": 0},
                "burst": {"type": "integer", "minimum": 1},
            },
        },
    },
    "credits": CREDITS,
    "meta": {
        "type": ["object", "null"],
        "description": "any JSON object of at most 2048 bytes as compact JSON; null: none",
    },
}
_REQUIRED = ["id", "name", "scopes", "display_prefix", "status", "created_at"]

KEY: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", *_REQUIRED],
    "properties": _PROPERTIES,
}
# The self-service API shows a person their own keys: no `user_id`, no admin's `meta`.
_ADMIN_ONLY = ("user_id", "meta")
OWN_KEY: dict[str, Any] = {
    "type": "object",
    "required": _REQUIRED,
    "not": {"anyOf": [{"required": [name]} for name in _ADMIN_ONLY]},
    "properties": {name: schema for name, schema in _PROPERTIES.items() if name not in _ADMIN_ONLY},
}


def with_secret(ref: str) -> dict[str, Any]:
    """The create/rotate answer: the key schema at `ref` plus its plaintext, shown once."""
    return {
        "allOf": [
            {"$ref": f"#/components/schemas/{ref}"},
            {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}},
        ]
    }


NEW_KEY = with_secret("Key")


# The networks a key was used from in the last 30 days (the new-network notice, §21).
NETWORKS: dict[str, Any] = {
    "type": "object",
    "required": ["networks"],
    "properties": {
        "networks": {
            "type": "array",
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": ["network", "first_seen_at", "last_seen_at"],
                "properties": {
                    "network": {"type": "string", "description": "e.g. 203.0.113.0/24"},
                    "first_seen_at": {"type": "string", "format": "date-time"},
                    "last_seen_at": {"type": "string", "format": "date-time"},
                },
            },
        }
    },
}

_BUCKET_COUNT = {"type": "integer", "minimum": 0}
USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["key_id", "granularity", "buckets"],
    "properties": {
        "key_id": {"type": "string", "format": "uuid"},
        "granularity": {"enum": ["hour", "day"]},
        "buckets": {
            "type": "array",
            "maxItems": 2000,
            "items": {
                "type": "object",
                "required": ["start", "allowed", "rejected", "denied", "rate_limited",
                             "credits_exhausted", "credits_spent"],
                "properties": {
                    "start": {"type": "string", "format": "date-time"},
                    **{name: _BUCKET_COUNT for name in (
                        "allowed", "rejected", "denied", "rate_limited",
                        "credits_exhausted", "credits_spent")},
                },
            },
        },
    },
}  # fmt: skip
# ?from=&to=&granularity= of the usage endpoints
USAGE_PARAMETERS: list[dict[str, Any]] = [
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "granularity", "in": "query", "schema": {"enum": ["hour", "day"]}},
]
