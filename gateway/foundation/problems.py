"""Every error the gateway itself produces: RFC 9457 problem+json.

One `Problem` per failure, with a stable slug: the log `reason` and the end of
the problem `type` URI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web

from gateway.http1.messages import Reply

TYPE_BASE = "urn:gateway:problem:"
CONTENT_TYPE = "application/problem+json"
_encode = msgspec.json.Encoder().encode
# The body's JSON Schema, for the OpenAPI documents.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


class Problem(Exception):
    """Raise to answer with a problem+json body; never carries a secret."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, request_id: str) -> bytes:
        return _encode(
            {
                "type": TYPE_BASE + self.slug,
                "title": HTTPStatus(self.status).phrase,
                "status": self.status,
                "detail": self.detail,
                "request_id": request_id,
                **self.extra,
            }
        )

    def reply(self, request_id: str, headers: Mapping[str, str] | None = None) -> Reply:
        merged = {**self.headers, **(headers or {}), "X-Request-Id": request_id}
        merged["Content-Type"] = CONTENT_TYPE
        return Reply(self.status, merged, self.body(request_id))

    def response(self, request_id: str, headers: Mapping[str, str] | None = None) -> web.Response:
        merged = {**self.headers, **(headers or {}), "X-Request-Id": request_id}
        return web.Response(
            status=self.status,
            body=self.body(request_id),
            content_type=CONTENT_TYPE,
            headers=merged,
        )


def bad_request(slug: str, detail: str) -> Problem:
    return Problem(400, slug, detail)


def unauthorized(slug: str, detail: str) -> Problem:
    return Problem(401, slug, detail, headers={"WWW-Authenticate": "Bearer"})


def insufficient_scope(missing: Sequence[str]) -> Problem:
    return Problem(
        403,
        "insufficient-scope",
        "the credential lacks the scopes: " + " ".join(missing),
        headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
        extra={"missing_scopes": list(missing)},
    )


def invalid_fields(errors: Sequence[tuple[str, str]], status: int = 422) -> Problem:
    """A 422 with one `{field, message}` per invalid field (§8)."""
    return Problem(
        status,
        "invalid-request",
        "; ".join(f"{field}: {message}" for field, message in errors),
        extra={"errors": [{"field": field, "message": message} for field, message in errors]},
    )


def database_unavailable() -> Problem:
    return Problem(
        503,
        "database-unavailable",
        "the credential cannot be checked right now; retry shortly",
        headers={"Retry-After": "2"},
    )
