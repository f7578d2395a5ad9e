"""Step 6: forward to the upstream and stream both ways.

The credential and every header a client could use to impersonate someone
(`X-Gateway-*`, method overrides, forwarding headers) are removed before the
identity is added; the path the policy checked is the path sent, byte for byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.forward import websocket
from gateway.forward.upstreams import UpstreamTarget
from gateway.keys.principal import Principal
from gateway.problems import Problem

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded: the credential, method overrides (the policy checked the real
# method), and forwarding headers a client could forge; we set our own.
_REQUEST_DROP = HOP_BY_HOP | {
    "authorization",
    "x-api-key",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    # Answered here, after authorization: an upload the policy refuses is never sent.
    "expect",
}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
CHUNK = 64 * 1024
_BODILESS = frozenset({204, 304})


class BodyTooLarge(Exception):
    pass


def request_headers(
    request: web.BaseRequest, principal: Principal | None, request_id: str
) -> CIMultiDict[str]:
    """The headers sent upstream."""
    incoming = request.headers
    named = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        # CGI/WSGI backends read "_" as "-": X_Gateway_User_Id would become the
        # identity header on their side, so names are compared with "_" folded.
        lower = name.lower().replace("_", "-")
        if lower in _REQUEST_DROP or lower in named or lower.startswith("x-gateway-"):
            continue
        out.add(name, value)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    out["X-Forwarded-For"] = peer[0] if peer else "unknown"
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Forwarded-Host"] = incoming.get("Host", "")
    out["X-Request-Id"] = request_id
    if principal is not None:
        out["X-Gateway-User-Id"] = principal.user_id
        out["X-Gateway-Key-Id"] = principal.key_id
        out["X-Gateway-Scopes"] = principal.scope_header
        out["X-Gateway-Auth"] = principal.auth
    return out


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", [])
    if not values:
        return frozenset()
    return frozenset(
        t.strip().lower().replace("_", "-") for v in values for t in v.split(",") if t.strip()
    )


class _LimitedBody:
    """The request body, streamed; stops the upload as soon as it crosses the limit."""

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        # aiohttp's client wraps errors raised by a body generator; remember ours.
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._content.iter_chunked(CHUNK):
            seen += len(chunk)
            if seen > self._limit:
                self.exceeded = True
                raise BodyTooLarge
            yield chunk


class Forwarder:
    """One client session for all upstreams: pooled keep-alive, no cookies, no decompression.
    WebSocket upgrades go to `websocket.relay`; everything else is streamed here."""

    def __init__(self, session: aiohttp.ClientSession, max_body_bytes: int) -> None:
        self._session = session
        self._max_body = max_body_bytes

    async def forward(
        self,
        request: web.BaseRequest,
        raw_target: str,
        upstream: UpstreamTarget,
        headers: CIMultiDict[str],
        extra: dict[str, str],
        timing: dict[str, float],
    ) -> web.StreamResponse:
        if websocket.is_upgrade(request):
            return await websocket.relay(
                self._session, request, raw_target, upstream, headers, extra
            )
        length = request.content_length
        if length is not None and length > self._max_body:
            raise Problem(413, "body-too-large", "the request body is too large")
        await _continue(request)
        body = _LimitedBody(request.content, self._max_body) if request.body_exists else None
        url = URL(upstream.base + raw_target, encoded=True)
        started = time.perf_counter()
        try:
            upstream_response = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=body.chunks() if body else None,
                timeout=upstream.timeout,
            )
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            raise _failure(exc, body) from None
        finally:
            timing["upstream_ms"] = (time.perf_counter() - started) * 1000
        async with upstream_response:
            return await _relay(request, upstream_response, extra)


async def _continue(request: web.BaseRequest) -> None:
    """Tell a client waiting on `Expect: 100-continue` to send its body (as aiohttp's router would)."""
    expect = request.headers.get("Expect")
    if expect is None or request.version != (1, 1):
        return
    if expect.lower() != "100-continue":
        raise Problem(417, "expectation-failed", "only Expect: 100-continue is supported")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the real response has not started


def _failure(exc: Exception, body: _LimitedBody | None) -> Problem:
    if body is not None and body.exceeded:
        return Problem(413, "body-too-large", "the request body is too large")
    if isinstance(exc, TimeoutError):
        return Problem(504, "upstream-timeout", "the upstream timed out")
    return Problem(502, "upstream-unreachable", "the upstream failed")


async def _relay(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, extra: dict[str, str]
) -> web.StreamResponse:
    headers = _response_headers(upstream, extra)
    length = upstream.content_length
    if request.method == "HEAD" or upstream.status in _BODILESS:
        # No body follows, whatever Content-Length says (for HEAD it describes a GET).
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if length is not None and request.method == "HEAD":
            response.content_length = length
        await response.prepare(request)
        await response.write_eof()
        return response
    if length is not None and length <= CHUNK:
        # One chunk at most: read it, then answer with headers and body in one
        # write. Streaming it would cost two more system calls per response.
        try:
            body = await upstream.content.readexactly(length)
        except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise _failure(exc, None) from None
        return web.Response(
            status=upstream.status, reason=upstream.reason, body=body, headers=headers
        )
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError):
        # The status is already sent: cutting the connection is the only honest
        # signal left, so the client cannot mistake a truncated body for a whole one.
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _response_headers(upstream: aiohttp.ClientResponse, extra: dict[str, str]) -> CIMultiDict[str]:
    named = _connection_tokens(upstream.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lower = name.lower().replace("_", "-")
        if lower not in _RESPONSE_DROP and lower not in named:
            headers.add(name, value)
    headers.update(extra)
    return headers
