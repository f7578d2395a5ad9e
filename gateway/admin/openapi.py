"""The OpenAPI 3.1 document of the admin API, served at /admin/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from gateway.audit.events import ACTIONS
from gateway.audit.outbox import EVENT_TYPES
from gateway.foundation.problems import PROBLEM_SCHEMA
from gateway.keys.schemas import (
    CONTROLS,
    CREDITS,
    KEY,
    NETWORKS,
    NEW_KEY,
    USAGE,
    USAGE_PARAMETERS,
)

_POOL_BODY: dict[str, Any] = {
    **CREDITS,
    "type": "object",
    "description": "The pool's balance and refill; without `remaining`, a refill starts full.",
}
_USER_CREDITS: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", "credits"],
    "properties": {"user_id": {"type": "string"}, "credits": CREDITS},
}
_MEMBERSHIP = {
    "type": "object",
    "required": ["user_id", "resource_type", "resource_id"],
    "additionalProperties": False,
    "properties": {
        "user_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "resource_type": {"enum": ["organization", "project"]},
        "resource_id": {"type": "string", "minLength": 1, "maxLength": 200},
    },
}
_EXPIRY: dict[str, Any] = {
    "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 36500},
    "expires_at": {"type": "string", "format": "date-time"},
}
_ORG_POLICY_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["max_lifetime_days"],
    "additionalProperties": False,
    "properties": {
        "max_lifetime_days": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 36500,
            "description": "keys used on this organization's routes must expire within this"
            " many days of their creation; null: no limit",
        }
    },
}
_ORG_POLICY: dict[str, Any] = {
    "type": "object",
    "required": ["organization", "max_lifetime_days", "updated_at"],
    "properties": {
        "organization": {"type": "string"},
        "max_lifetime_days": {"type": ["integer", "null"]},
        "updated_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
_CREATE = {
    "type": "object",
    "required": ["user_id", "name", "scopes"],
    "additionalProperties": False,
    "properties": {
        "user_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": ["string", "null"], "maxLength": 500},
        "scopes": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        **_EXPIRY,
        **CONTROLS,
    },
}
_UPDATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": ["string", "null"], "maxLength": 500},
        **CONTROLS,
    },
}


_CREDIT_CHANGE = {
    "oneOf": [
        {
            "type": "object",
            "required": ["set"],
            "additionalProperties": False,
            "properties": {"set": {"type": ["integer", "null"], "minimum": 0}},
        },
        *(
            {
                "type": "object",
                "required": [operation],
                "additionalProperties": False,
                "properties": {operation: {"type": "integer", "minimum": 0}},
            }
            for operation in ("increment", "decrement")
        ),
    ]
}

_WEBHOOK = {
    "type": "object",
    "required": ["id", "url", "events", "description", "created_at", "previous_secret_until"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"enum": ["*", *EVENT_TYPES]}},
        "description": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "previous_secret_until": {"type": ["string", "null"], "format": "date-time"},
    },
}
_WEBHOOK_WITH_SECRET = {
    "allOf": [
        _WEBHOOK,
        {
            "type": "object",
            "required": ["secret"],
            "properties": {"secret": {"type": "string", "pattern": "^whsec_"}},
        },
    ]
}
_NEW_WEBHOOK = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "events": {"type": "array", "minItems": 1, "items": {"enum": ["*", *EVENT_TYPES]}},
        "description": {"type": ["string", "null"], "maxLength": 500},
    },
}
_DELIVERY = {
    "type": "object",
    "required": ["id", "event_id", "type", "status", "attempts"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "event_id": {"type": "string"},
        "type": {"type": "string"},
        "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "last_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "last_status": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
    },
}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_EVENT = {
    "type": "object",
    "required": ["id", "at", "actor", "action", "user_id", "key_id", "details"],
    "properties": {
        "id": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
        "actor": {"type": "string"},
        "action": {"enum": list(ACTIONS)},
        "user_id": {"type": ["string", "null"]},
        "key_id": {"type": ["string", "null"]},
        "details": {"type": "object"},
        "request_id": {"type": ["string", "null"]},
        "ip": {"type": ["string", "null"]},
    },
}
_AUDIT_PAGE = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["events", "next_cursor"],
            "properties": {
                "events": {"type": "array", "items": _EVENT},
                "next_cursor": {"type": ["string", "null"]},
            },
        }
    }
}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


_ERRORS = {
    "400": _problem("Malformed JSON or not an object"),
    "401": _problem("Missing or wrong admin token"),
    "422": _problem("Invalid fields"),
    "503": _problem("Admin API disabled or database unavailable"),
}
_KEY_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "gateway admin API", "version": "1"},
    "components": {
        "schemas": {"Key": KEY, "NewKey": NEW_KEY, "Problem": PROBLEM_SCHEMA},
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"admin": []}],
    "paths": {
        "/admin/v1/keys": {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _CREATE}},
                },
                "responses": {
                    "201": {"description": "Created", "content": _json("NewKey")},
                    **_ERRORS,
                },
            },
            "get": {
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The user's keys",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["keys"],
                                    "properties": {
                                        "keys": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Key"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/keys/{id}": {
            "get": {
                "parameters": _KEY_ID,
                "responses": {
                    "200": {"description": "The key", "content": _json("Key")},
                    "404": _problem("No such key"),
                    **_ERRORS,
                },
            },
            "patch": {
                "parameters": _KEY_ID,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _UPDATE}},
                },
                "responses": {
                    "200": {"description": "The key, changed", "content": _json("Key")},
                    "404": _problem("No such key"),
                    **_ERRORS,
                },
            },
            "delete": {
                "parameters": _KEY_ID,
                "responses": {
                    "204": {"description": "Revoked"},
                    "404": _problem("No such key"),
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/keys/{id}/rotate": {
            "post": {
                "parameters": _KEY_ID,
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "grace_seconds": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "maximum": 2592000,
                                    },
                                    # else the new key expires when the old one would
                                    "expires_in_days": _EXPIRY["expires_in_days"],
                                    "expires_at": _EXPIRY["expires_at"],
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {"description": "The new key", "content": _json("NewKey")},
                    "404": _problem("No such key"),
                    "409": _problem("The key is not active"),
                    **_ERRORS,
                },
            }
        },
        "/admin/v1/keys/{id}/credits": {
            "post": {
                "summary": "Set, increment or decrement a key's credit balance",
                "parameters": _KEY_ID,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _CREDIT_CHANGE}},
                },
                "responses": {
                    "200": {
                        "description": "The key's credits after the change (null: unlimited)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["credits"],
                                    "properties": {"credits": CREDITS},
                                }
                            }
                        },
                    },
                    "404": _problem("No such key"),
                    "409": _problem("An increment or decrement of a key with unlimited credits"),
                    **_ERRORS,
                },
            }
        },
        "/admin/v1/users/{id}/credits": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": {
                "summary": "A user's credit pool, spent by each of their keys without its own",
                "responses": {
                    "200": _answer("The pool (credits null: none)", _USER_CREDITS),
                    **_ERRORS,
                },
            },
            "put": {
                "summary": "Make or replace the user's pool",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _POOL_BODY}},
                },
                "responses": {"200": _answer("The pool after", _USER_CREDITS), **_ERRORS},
            },
            "post": {
                "summary": "Set (null: remove), increment or decrement the user's pool",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _CREDIT_CHANGE}},
                },
                "responses": {
                    "200": _answer("The pool after", _USER_CREDITS),
                    "409": _problem("An increment or decrement for a user without a pool"),
                    **_ERRORS,
                },
            },
            "delete": {
                "summary": "Remove the user's pool: their keys without credits of their own"
                " are unlimited again",
                "responses": {"200": _answer("No pool", _USER_CREDITS), **_ERRORS},
            },
        },
        "/admin/v1/keys/{id}/usage": {
            "get": {
                "summary": "A key's requests per hour or day, every bucket of the range",
                "parameters": [*_KEY_ID, *USAGE_PARAMETERS],
                "responses": {
                    "200": {
                        "description": "Buckets (zeros included)",
                        "content": {"application/json": {"schema": USAGE}},
                    },
                    "404": _problem("No such key"),
                    **_ERRORS,
                },
            }
        },
        "/admin/v1/keys/{id}/networks": {
            "get": {
                "summary": "The networks the key was used from in the last 30 days",
                "parameters": _KEY_ID,
                "responses": {
                    "200": {
                        "description": "Latest first (recorded with the new-network notice on)",
                        "content": {"application/json": {"schema": NETWORKS}},
                    },
                    "404": _problem("No such key"),
                    **_ERRORS,
                },
            }
        },
        "/admin/v1/webhooks": {
            "post": {
                "summary": "A webhook endpoint; its secret is in this answer only",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _NEW_WEBHOOK}},
                },
                "responses": {
                    "201": _answer("The endpoint and its secret", _WEBHOOK_WITH_SECRET),
                    **_ERRORS,
                },
            },
            "get": {
                "responses": {
                    "200": _answer(
                        "Every endpoint, newest first",
                        {
                            "type": "object",
                            "required": ["webhooks"],
                            "properties": {"webhooks": {"type": "array", "items": _WEBHOOK}},
                        },
                    ),
                    **_ERRORS,
                }
            },
        },
        "/admin/v1/webhooks/{id}": {
            "get": {
                "parameters": _KEY_ID,
                "responses": {
                    "200": _answer("The endpoint", _WEBHOOK),
                    "404": _problem("No such endpoint"),
                    **_ERRORS,
                },
            },
            "delete": {
                "parameters": _KEY_ID,
                "responses": {
                    "204": {"description": "Deleted, with its pending deliveries"},
                    "404": _problem("No such endpoint"),
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/webhooks/{id}/rotate-secret": {
            "post": {
                "parameters": _KEY_ID,
                "responses": {
                    "200": _answer(
                        "The new secret; the old one signs beside it for 24 h", _WEBHOOK_WITH_SECRET
                    ),
                    "404": _problem("No such endpoint"),
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/webhooks/{id}/deliveries": {
            "get": {
                "parameters": _KEY_ID,
                "responses": {
                    "200": _answer(
                        "The endpoint's last 100 deliveries, newest first",
                        {
                            "type": "object",
                            "required": ["deliveries"],
                            "properties": {"deliveries": {"type": "array", "items": _DELIVERY}},
                        },
                    ),
                    "404": _problem("No such endpoint"),
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/webhook-deliveries/{id}/retry": {
            "post": {
                "parameters": _KEY_ID,
                "responses": {
                    "202": _answer("Due again now, with a fresh retry schedule", _DELIVERY),
                    "404": _problem("No such delivery"),
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/memberships": {
            method: {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _MEMBERSHIP}},
                },
                "responses": {"204": {"description": "Done"}, **_ERRORS},
            }
            for method in ("put", "delete")
        },
        "/admin/v1/organizations/{organization}/key-policy": {
            "parameters": [
                {
                    "name": "organization",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
            ],
            "get": {
                "responses": {
                    "200": _answer("The organization's key policy", _ORG_POLICY),
                    "404": _problem("No membership names this organization"),
                    **_ERRORS,
                },
            },
            "put": {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ORG_POLICY_BODY}},
                },
                "responses": {
                    "200": _answer("Set; applied by every gateway within a second", _ORG_POLICY),
                    "404": _problem("No membership names this organization"),
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/audit": {
            "get": {
                "parameters": [
                    _query("user_id", {"type": "string"}),
                    _query("key_id", {"type": "string", "format": "uuid"}),
                    _query("action", {"enum": list(ACTIONS)}),
                    _query("since", {"type": "string", "format": "date-time"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _query("cursor", {"type": "string"}),
                ],
                "responses": {
                    "200": {"description": "Events, newest first", "content": _AUDIT_PAGE},
                    **_ERRORS,
                },
            }
        },
        "/admin/v1/openapi.json": {"get": {"responses": {"200": {"description": "This document"}}}},
    },
}
