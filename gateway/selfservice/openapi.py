"""The OpenAPI 3.1 document of the self-service API, served at `PATH/v1/openapi.json`."""

from __future__ import annotations

from typing import Any

from gateway.foundation.problems import PROBLEM_SCHEMA
from gateway.keys.schemas import CREDITS, NETWORKS, OWN_KEY, USAGE, USAGE_PARAMETERS, with_secret

_NAME = {"type": "string", "minLength": 1, "maxLength": 100}
_DESCRIPTION = {"type": ["string", "null"], "maxLength": 500}
_CREATE = {
    "type": "object",
    "required": ["name", "scopes"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "description": _DESCRIPTION,
        "scopes": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "expires_in_days": {"type": "integer", "minimum": 1},
        "expires_at": {"type": "string", "format": "date-time"},
        "never": {"type": "boolean"},
    },
}
_UPDATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"name": _NAME, "description": _DESCRIPTION, "enabled": {"type": "boolean"}},
}
_ROTATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "grace_seconds": {"type": "integer", "minimum": 0, "maximum": 604800},
        "expires_in_days": {"type": "integer", "minimum": 1},
    },
}
_SESSION = {
    "type": "object",
    "required": ["user", "scopes", "expiry_days", "max_keys"],
    "properties": {
        "user": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
        },
        "scopes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "description", "implies"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "implies": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "expiry_days": {
            "type": "object",
            "required": ["presets", "default", "max", "allow_never"],
            "properties": {
                "presets": {"type": "array", "items": {"type": "integer"}},
                "default": {"type": "integer"},
                "max": {"type": "integer"},
                "allow_never": {"type": "boolean"},
                # key_policy.max_lifetime_days, when it bounds what is offered
                "policy_max": {"type": ["integer", "null"]},
            },
        },
        "max_keys": {"type": "integer"},
    },
}
_KEY_LIST = {
    "type": "object",
    "required": ["keys", "credits"],
    "properties": {
        # Your credit pool (§21), spent by each of your keys without credits of its own.
        "credits": CREDITS,
        "keys": {
            "type": "array",
            "items": {
                "allOf": [
                    {"$ref": "#/components/schemas/OwnKey"},
                    {
                        "type": "object",
                        "required": ["requests_30_days"],
                        "properties": {"requests_30_days": {"type": "integer", "minimum": 0}},
                    },
                ]
            },
        },
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_ERRORS = {
    "400": _problem("Malformed JSON or not an object"),
    "401": _problem("Not signed in, or not a session (API keys are refused)"),
    "403": _problem("Cross-site request (cookie mode)"),
    "405": _problem("Method not allowed"),
    "503": _problem("Database or the host's JWKS unavailable"),
}
_KEY_ERRORS = {
    **_ERRORS,
    "404": _problem("No such key of yours"),
    "422": _problem("Invalid fields"),
}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


def _operation(
    responses: dict[str, Any], body: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    operation: dict[str, Any] = {"responses": responses, **more}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def document(base: str) -> dict[str, Any]:
    """The document for the API under `base` (`self_service.path`)."""
    created = {
        "description": "The key, with its secret shown only here",
        "content": _json(_ref("NewOwnKey")),
    }
    status = {"name": "status", "in": "query", "schema": {"enum": ["active", "inactive", "all"]}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gateway self-service API keys", "version": "1"},
        "components": {
            "schemas": {
                "OwnKey": OWN_KEY,
                "NewOwnKey": with_secret("OwnKey"),
                "Problem": PROBLEM_SCHEMA,
            },
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"session": []}],
        "paths": {
            f"{base}/v1/session": {
                "get": _operation(
                    {
                        "200": {"description": "Who is signed in", "content": _json(_SESSION)},
                        **_ERRORS,
                    }
                )
            },
            f"{base}/v1/keys": {
                "get": _operation(
                    {
                        "200": {"description": "Your keys", "content": _json(_KEY_LIST)},
                        "422": _problem("Bad status"),
                        **_ERRORS,
                    },
                    parameters=[status],
                ),
                "post": _operation(
                    {"201": created, "409": _problem("Too many active keys"), **_KEY_ERRORS},
                    _CREATE,
                ),
            },
            f"{base}/v1/keys/{{id}}": {
                "parameters": _ID,
                "patch": _operation(
                    {
                        "200": {"description": "The key", "content": _json(_ref("OwnKey"))},
                        **_KEY_ERRORS,
                    },
                    _UPDATE,
                ),
                "delete": _operation(
                    {"204": {"description": "Revoked everywhere within a second"}, **_KEY_ERRORS}
                ),
            },
            f"{base}/v1/keys/{{id}}/rotate": {
                "parameters": _ID,
                "post": _operation(
                    {"201": created, "409": _problem("The key is not active"), **_KEY_ERRORS},
                    _ROTATE,
                ),
            },
            f"{base}/v1/keys/{{id}}/usage": {
                "parameters": _ID,
                "get": _operation(
                    {
                        "200": {"description": "Requests per bucket", "content": _json(USAGE)},
                        **_KEY_ERRORS,
                    },
                    parameters=USAGE_PARAMETERS,
                ),
            },
            f"{base}/v1/keys/{{id}}/networks": {
                "parameters": _ID,
                "get": _operation(
                    {
                        "200": {
                            "description": "Networks of the last 30 days, latest first",
                            "content": _json(NETWORKS),
                        },
                        **_KEY_ERRORS,
                    },
                ),
            },
            f"{base}/v1/openapi.json": {
                "get": {"security": [], "responses": {"200": {"description": "This document"}}}
            },
        },
    }
