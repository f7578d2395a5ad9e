"""Step 6: forward to the upstream and stream both ways.

The credential and every header a client could use to impersonate someone
(`X-Gateway-*`, method overrides, forwarding headers) are removed before the
identity is added; the path the policy checked is the path sent, byte for byte.
The request head is built once, as bytes, from the headers as received.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forward import websocket
from gateway.forward.client import Answer, Stream, UpstreamError, UpstreamTimeout
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
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Identity:
    """What the upstream is told about the caller: the `X-Gateway-*` headers, a signed
    `X-Gateway-Identity` token (§15), or both; nothing on a public route."""

    principal: Principal | None
    headers: bool = True
    token: str | None = None


ANONYMOUS = Identity(None)


def request_headers(
    request: web.BaseRequest, identity: Identity, request_id: str
) -> CIMultiDict[str]:
    """The headers sent upstream with a WebSocket handshake (aiohttp's client)."""
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
    for name, value in _added_headers(request, identity, request_id):
        out[name] = value
    return out


def _added_headers(
    request: web.BaseRequest, identity: Identity, request_id: str
) -> list[tuple[str, str]]:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    added = [
        ("X-Forwarded-For", peer[0] if peer else "unknown"),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", request.headers.get("Host", "")),
        ("X-Request-Id", request_id),
    ]
    principal = identity.principal
    if principal is not None and identity.headers:
        added += [
            ("X-Gateway-User-Id", principal.user_id),
            ("X-Gateway-Key-Id", principal.key_id),
            ("X-Gateway-Scopes", principal.scope_header),
            ("X-Gateway-Auth", principal.auth),
        ]
    if identity.token is not None:
        added.append(("X-Gateway-Identity", identity.token))
    return added


def request_head(
    request: web.BaseRequest,
    identity: Identity,
    request_id: str,
    upstream: UpstreamTarget,
    raw_target: str,
    framing: bytes,
) -> bytes:
    """The request line and headers sent upstream, as bytes, ready for one write."""
    origin = upstream.origin
    target = (origin.path_prefix + raw_target).encode("ascii")
    parts = [
        b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (request.method.encode(), target, origin.host_header)
    ]
    named = _connection_tokens(request.headers)
    for name, value in request.raw_headers:
        if _never_forwarded(name) or (named and _folded(name) in named):
            continue
        parts += (name, b": ", value, b"\r\n")
    for added, text in _added_headers(request, identity, request_id):
        parts.append(b"%b: %b\r\n" % (added.encode(), text.encode("utf-8", "surrogateescape")))
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


@functools.lru_cache(maxsize=4096)
def _folded(name: bytes) -> str:
    """A header name compared as CGI/WSGI backends read it: lower case, "_" as "-"."""
    return name.lower().replace(b"_", b"-").decode("latin-1")


# Cached per spelling: the same few names arrive on every request.
@functools.lru_cache(maxsize=4096)
def _never_forwarded(name: bytes) -> bool:
    folded = _folded(name)
    return folded in _REQUEST_DROP or folded == "content-length" or folded.startswith("x-gateway-")


@functools.lru_cache(maxsize=4096)
def _dropped_from_response(name: bytes) -> bool:
    return _folded(name) in _RESPONSE_DROP


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

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._content.iter_chunked(CHUNK):
            seen += len(chunk)
            if seen > self._limit:
                raise BodyTooLarge
            yield chunk


class Forwarder:
    """Streams requests to their upstream over the lean client's pooled connections;
    WebSocket upgrades go to `websocket.relay` on aiohttp's client session."""

    def __init__(self, session: aiohttp.ClientSession, max_body_bytes: int) -> None:
        self._session = session
        self._max_body = max_body_bytes

    async def forward(
        self,
        request: web.BaseRequest,
        raw_target: str,
        upstream: UpstreamTarget,
        identity: Identity,
        request_id: str,
        extra: dict[str, str],
        timing: dict[str, float],
    ) -> web.StreamResponse:
        if websocket.is_upgrade(request):
            headers = request_headers(request, identity, request_id)
            return await websocket.relay(
                self._session, request, raw_target, upstream, headers, extra
            )
        length = request.content_length
        if length is not None and length > self._max_body:
            raise Problem(413, "body-too-large", "the request body is too large")
        await _continue(request)
        body, stream, framing = await self._body(request, length)
        head = request_head(request, identity, request_id, upstream, raw_target, framing)
        started = time.perf_counter()
        try:
            answer = await upstream.pool.send(
                head,
                method=request.method.encode(),
                body=body,
                stream=stream,
                header_timeout=upstream.timeout_seconds,
            )
        except (UpstreamError, BodyTooLarge) as exc:
            raise _failure(exc) from None
        except (ConnectionError, aiohttp.ClientPayloadError):
            # The client went away in the middle of its upload; nobody reads this answer.
            raise Problem(400, "incomplete-body", "the request body ended early") from None
        finally:
            timing["upstream_ms"] = (time.perf_counter() - started) * 1000
        try:
            return await _relay(request, answer, extra, upstream.timeout_seconds)
        finally:
            answer.release()

    async def _body(
        self, request: web.BaseRequest, length: int | None
    ) -> tuple[bytes, Stream | None, bytes]:
        """(a small body to send with the head, or a stream; the framing header)."""
        if not request.body_exists:
            empty = request.method in _BODY_METHODS
            return b"", None, b"Content-Length: 0\r\n" if empty else b""
        if length is not None and length <= CHUNK:
            try:
                body = await request.content.readexactly(length)
            except asyncio.IncompleteReadError:
                raise Problem(400, "incomplete-body", "the request body ended early") from None
            return body, None, b"Content-Length: %d\r\n" % length
        limited = _LimitedBody(request.content, self._max_body)
        if length is not None:
            return b"", Stream(limited.chunks, chunked=False), b"Content-Length: %d\r\n" % length
        return b"", Stream(limited.chunks, chunked=True), b"Transfer-Encoding: chunked\r\n"


async def _continue(request: web.BaseRequest) -> None:
    """Tell a client waiting on `Expect: 100-continue` to send its body (as aiohttp's router would)."""
    expect = request.headers.get("Expect")
    if expect is None or request.version != (1, 1):
        return
    if expect.lower() != "100-continue":
        raise Problem(417, "expectation-failed", "only Expect: 100-continue is supported")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the real response has not started


def _failure(exc: Exception) -> Problem:
    if isinstance(exc, BodyTooLarge):
        return Problem(413, "body-too-large", "the request body is too large")
    if isinstance(exc, UpstreamTimeout):
        return Problem(504, "upstream-timeout", "the upstream timed out")
    return Problem(502, "upstream-unreachable", "the upstream failed")


async def _relay(
    request: web.BaseRequest, answer: Answer, extra: dict[str, str], seconds: float
) -> web.StreamResponse:
    headers = _response_headers(answer, extra)
    status, reason, length = answer.status, answer.reason or None, answer.content_length
    if request.method == "HEAD" or status in _BODILESS:
        # No body follows, whatever Content-Length says (for HEAD it describes a GET).
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if length is not None and request.method == "HEAD":
            response.content_length = length
        await response.prepare(request)
        await response.write_eof()
        return response
    if length is not None and length <= CHUNK:
        # One chunk at most: read it, then answer with headers and body in one
        # write. Streaming it would cost two more system calls per response.
        try:
            body = await answer.read_all(seconds)
        except UpstreamError as exc:
            raise _failure(exc) from None
        return web.Response(status=status, reason=reason, body=body, headers=headers)
    response = web.StreamResponse(status=status, reason=reason, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        while chunk := await answer.next_chunk(seconds):
            await response.write(chunk)
    except UpstreamError:
        # The status is already sent: cutting the connection is the only honest
        # signal left, so the client cannot mistake a truncated body for a whole one.
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _response_headers(answer: Answer, extra: dict[str, str]) -> CIMultiDict[str]:
    named = {
        token.strip().lower().replace("_", "-")
        for name, value in answer.headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict(
        [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in answer.headers
            if not _dropped_from_response(name) and not (named and _folded(name) in named)
        ]
    )
    headers.update(extra)
    return headers
