"""JSON in and out for the gateway's own endpoints: the admin API (aiohttp requests and
responses) and those on the proxy listener (bytes in, a `Reply` out).

A body is read up to a limit (413 beyond it); anything but a JSON object is a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from gateway.foundation.problems import Problem, bad_request
from gateway.http1.messages import Reply

MAX_BODY = 64 * 1024
_encode = msgspec.json.Encoder().encode


async def read_object(
    request: web.BaseRequest, *, empty_is_object: bool = False, limit: int = MAX_BODY
) -> dict[str, Any]:
    """The body as a JSON object; with `empty_is_object`, no body at all reads as `{}`."""
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, "body-too-large", "the request body is too large")
    raw = await request.content.read(limit + 1) if request.body_exists else b""
    if len(raw) > limit:
        raise Problem(413, "body-too-large", "the request body is too large")
    return parse_object(raw, empty_is_object=empty_is_object)


def parse_object(raw: bytes, *, empty_is_object: bool = False) -> dict[str, Any]:
    """A whole body as a JSON object (400 otherwise)."""
    if not raw.strip():
        if empty_is_object:
            return {}
        raise bad_request("malformed-json", "the body must be a JSON object")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise bad_request("malformed-json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("malformed-json", "the body must be a JSON object")
    return body


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=_encode(data), content_type="application/json", headers=headers
    )


def json_reply(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply.of(status, _encode(data), "application/json", headers)
