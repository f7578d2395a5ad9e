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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class IncompleteBody(Exception):
    """The client closed the connection before its request body ended."""


def encode_headers(headers: dict[str, str]) -> bytes:
    """Header lines, each ending in CRLF. Values as UTF-8; a value echoed from the
    request (a CORS origin) goes back as the bytes it came as."""
    lines = ""
    for name, value in headers.items():
        lines += name + ": " + value + "\r\n"
    return lines.encode("utf-8", "surrogateescape")


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
    for name, value in _added_headers(peer_of(request), incoming, identity, request_id):
        out[name] = value
    return out


def peer_of(request: web.BaseRequest) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else ""


def _added_headers(
    peer: str, headers: CIMultiDictProxy[str], identity: Identity, request_id: str
) -> list[tuple[str, str]]:
    # The listener speaks plain HTTP: TLS, when any, ends in front of the gateway.
    added = [
        ("X-Forwarded-For", peer or "unknown"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", headers.get("Host", "")),
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


class Incoming(Protocol):
    """What forwarding reads of a request: aiohttp's request or a `Downstream`."""

    @property
    def method(self) -> str: ...
    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...


def request_head(
    request: Incoming,
    peer: str,
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
    headers = request.headers
    named = _connection_tokens(headers)
    for name, value in request.raw_headers:
        if _never_forwarded(name) or (named and _folded(name) in named):
            continue
        parts += (name, b": ", value, b"\r\n")
    for added, text in _added_headers(peer, headers, identity, request_id):
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


class Downstream(Incoming, Protocol):
    """A client's request as the proxy listener's own server holds it (`edge.inbound.Exchange`):
    its head, its body, and the connection the answer is written to."""

    close_after: bool  # close the connection once this answer is written

    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def peer(self) -> str: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def body_exists(self) -> bool: ...
    async def read_exactly(self, length: int) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def send_continue(self) -> None: ...
    def head(
        self, status: int, reason: bytes, header_lines: bytes, framing: bytes = b""
    ) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def abort(self) -> None: ...


class _Body(Protocol):
    """A request body as the forwarder reads it, from either listener."""

    @property
    def body_exists(self) -> bool: ...
    async def read_exactly(self, length: int) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...


class _AiohttpBody:
    """aiohttp's request body (connections handed to aiohttp's server) as a `_Body`."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.body_exists = request.body_exists

    async def read_exactly(self, length: int) -> bytes:
        try:
            return await self._request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise IncompleteBody from None

    def chunks(self) -> AsyncIterator[bytes]:
        return self._request.content.iter_chunked(CHUNK)


def _limited(
    chunks: Callable[[], AsyncIterator[bytes]], limit: int
) -> Callable[[], AsyncIterator[bytes]]:
    """The body, streamed; stops the upload as soon as it crosses the limit."""

    async def limited() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in chunks():
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge
            yield chunk

    return limited


class Forwarder:
    """Streams requests to their upstream over the lean client's pooled connections and
    relays the answer: to a `Downstream` (the proxy listener's own server) or as
    an aiohttp response (connections handed to aiohttp). WebSocket upgrades go to
    `websocket.relay` on aiohttp's client session."""

    def __init__(self, session: aiohttp.ClientSession, max_body_bytes: int) -> None:
        self._session = session
        self._max_body = max_body_bytes

    async def relay(
        self,
        exchange: Downstream,
        raw_target: str,
        upstream: UpstreamTarget,
        identity: Identity,
        request_id: str,
        extra: dict[str, str],
        timing: dict[str, float],
    ) -> None:
        """Forward a request from the proxy listener's own server and answer it."""
        length = exchange.content_length
        self._check_length(length)
        if _expects_continue(exchange.headers, exchange.version):
            exchange.send_continue()
        if exchange.body_exists:
            body, stream, framing = await self._body(exchange, exchange.method, length)
        else:
            body, stream, framing = b"", None, _empty_framing(exchange.method)
        head = request_head(
            exchange, exchange.peer, identity, request_id, upstream, raw_target, framing
        )
        answer = await self._send(upstream, head, exchange.method, body, stream, timing)
        try:
            await _relay_to_exchange(exchange, answer, extra, upstream.timeout_seconds)
        finally:
            answer.release()

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
        """Forward a request on a connection handed to aiohttp's server."""
        if websocket.is_upgrade(request.method, request.headers):
            headers = request_headers(request, identity, request_id)
            return await websocket.relay(
                self._session, request, raw_target, upstream, headers, extra
            )
        length = request.content_length
        self._check_length(length)
        if _expects_continue(request.headers, request.version):
            await request.writer.write(_CONTINUE)
            request.writer.output_size = 0  # the real response has not started
        body, stream, framing = await self._body(_AiohttpBody(request), request.method, length)
        head = request_head(
            request, peer_of(request), identity, request_id, upstream, raw_target, framing
        )
        answer = await self._send(upstream, head, request.method, body, stream, timing)
        try:
            return await _relay(request, answer, extra, upstream.timeout_seconds)
        finally:
            answer.release()

    def _check_length(self, length: int | None) -> None:
        if length is not None and length > self._max_body:
            raise Problem(413, "body-too-large", "the request body is too large")

    async def _send(
        self,
        upstream: UpstreamTarget,
        head: bytes,
        method: str,
        body: bytes,
        stream: Stream | None,
        timing: dict[str, float],
    ) -> Answer:
        started = time.perf_counter()
        try:
            return await upstream.pool.send(
                head,
                method=method.encode(),
                body=body,
                stream=stream,
                header_timeout=upstream.timeout_seconds,
            )
        except (UpstreamError, BodyTooLarge) as exc:
            raise _failure(exc) from None
        except (ConnectionError, IncompleteBody, aiohttp.ClientPayloadError):
            # The client went away in the middle of its upload; nobody reads this answer.
            raise Problem(400, "incomplete-body", "the request body ended early") from None
        finally:
            timing["upstream_ms"] = (time.perf_counter() - started) * 1000

    async def _body(
        self, source: _Body, method: str, length: int | None
    ) -> tuple[bytes, Stream | None, bytes]:
        """(a small body to send with the head, or a stream; the framing header)."""
        if not source.body_exists:
            return b"", None, _empty_framing(method)
        if length is not None and length <= CHUNK:
            try:
                body = await source.read_exactly(length)
            except IncompleteBody:
                raise Problem(400, "incomplete-body", "the request body ended early") from None
            return body, None, b"Content-Length: %d\r\n" % length
        limited = _limited(source.chunks, self._max_body)
        if length is not None:
            return b"", Stream(limited, chunked=False), b"Content-Length: %d\r\n" % length
        return b"", Stream(limited, chunked=True), b"Transfer-Encoding: chunked\r\n"


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _empty_framing(method: str) -> bytes:
    """A method that normally carries a body says it has none."""
    return b"Content-Length: 0\r\n" if method in _BODY_METHODS else b""


def _expects_continue(headers: CIMultiDictProxy[str], version: tuple[int, int]) -> bool:
    """Whether a client waits on `Expect: 100-continue` (told to send once authorised)."""
    expect = headers.get("Expect")
    if expect is None or version != (1, 1):
        return False
    if expect.lower() != "100-continue":
        raise Problem(417, "expectation-failed", "only Expect: 100-continue is supported")
    return True


def _failure(exc: Exception) -> Problem:
    if isinstance(exc, BodyTooLarge):
        return Problem(413, "body-too-large", "the request body is too large")
    if isinstance(exc, UpstreamTimeout):
        return Problem(504, "upstream-timeout", "the upstream timed out")
    return Problem(502, "upstream-unreachable", "the upstream failed")


async def _relay_to_exchange(
    exchange: Downstream, answer: Answer, extra: dict[str, str], seconds: float
) -> None:
    lines = b"".join(_kept_response_lines(answer)) + encode_headers(extra)
    status, reason, length = answer.status, answer.reason.encode("latin-1"), answer.content_length
    if exchange.method == "HEAD" or status in _BODILESS:
        # No body follows, whatever Content-Length says (for HEAD it describes a GET).
        framing = b""
        if length is not None and exchange.method == "HEAD":
            framing = b"Content-Length: %d\r\n" % length
        exchange.write(exchange.head(status, reason, lines, framing))
        return
    if length is not None and length <= CHUNK:
        # One chunk at most: headers and body in one write.
        try:
            body = await answer.read_all(seconds)
        except UpstreamError as exc:
            raise _failure(exc) from None
        framing = b"Content-Length: %d\r\n" % len(body)
        exchange.write(exchange.head(status, reason, lines, framing) + body)
        return
    chunked = length is None and exchange.version >= (1, 1)
    if length is not None:
        framing = b"Content-Length: %d\r\n" % length
    elif chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        framing = b""  # an HTTP/1.0 client: the body ends with the connection
        exchange.close_after = True
    exchange.write(exchange.head(status, reason, lines, framing))
    try:
        while chunk := await answer.next_chunk(seconds):
            exchange.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await exchange.drain()
    except UpstreamError:
        # The status is already sent: cutting the connection is the only honest
        # signal left, so the client cannot mistake a truncated body for a whole one.
        exchange.abort()
        return
    except ConnectionError:
        return  # the client left; the unread answer closes its upstream connection
    if chunked:
        exchange.write(b"0\r\n\r\n")


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
        # One chunk at most: read it, then answer with headers and body in one write.
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
        # As in _relay_to_exchange: a truncated body must not look whole.
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _kept_response_lines(answer: Answer) -> Iterator[bytes]:
    """The upstream's response header lines that travel on: no hop-by-hop header, none
    its `Connection` names, no framing (the gateway frames the body itself)."""
    named = _connection_named(answer.headers)
    for name, value in answer.headers:
        if not _dropped_from_response(name) and not (named and _folded(name) in named):
            yield b"%b: %b\r\n" % (name, value)


def _connection_named(headers: list[tuple[bytes, bytes]]) -> frozenset[str]:
    """The header names a response's `Connection` header lists (hop-by-hop by name)."""
    named: frozenset[str] = frozenset()
    for name, value in headers:
        if _folded(name) == "connection":
            named |= _listed(value)
    return named


# Cached per value: an upstream sends the same one ("keep-alive") on every answer.
@functools.lru_cache(maxsize=256)
def _listed(value: bytes) -> frozenset[str]:
    return frozenset(
        token.strip().lower().replace("_", "-")
        for token in value.decode("latin-1").split(",")
        if token.strip()
    )


def _response_headers(answer: Answer, extra: dict[str, str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for line in _kept_response_lines(answer):
        name, _, value = line[:-2].partition(b": ")
        headers.add(name.decode("latin-1"), value.decode("latin-1"))
    headers.update(extra)
    return headers
