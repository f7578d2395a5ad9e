"""Step 6: forward to the upstream and stream both ways.

The credential and every header a client could use to impersonate someone
(`X-Gateway-*`, method overrides, forwarding headers) are removed before the
identity is added; the path the policy checked is the path sent, byte for byte.
The request head is built once, as bytes, from the headers as received.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from multidict import CIMultiDictProxy

from gateway.forward.client import Answer, Stream, UpstreamError, UpstreamTimeout
from gateway.forward.upstreams import UpstreamTarget
from gateway.foundation.config import Limits
from gateway.foundation.problems import Problem
from gateway.http1.fields import Fields
from gateway.http1.messages import BodyError
from gateway.http1.wire import HOP_BY_HOP, LAST_CHUNK, HeaderNames, Memo, chunk
from gateway.keys.principal import Principal
from gateway.tracing.spans import PROPAGATED, RequestTrace

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
    # Client-address headers: upstreams that believe them would take the client's word;
    # X-Real-IP is set to the address the gateway determined (§16).
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    # Answered here, after authorization: an upload the policy refuses is never sent.
    "expect",
}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Folding keeps a name's length: a header of a length no dropped name has is relayed
# without its name looked up (6 of the 8 headers of a typical answer). The lengths as
# bits of one small int: testing a bit is native, a frozenset lookup is not.
_RESPONSE_DROP_LENGTHS: Final = sum(1 << length for length in {len(n) for n in _RESPONSE_DROP})
CHUNK = 64 * 1024
RATE_GRACE_SECONDS = 10.0  # a streamed body's minimum rate is enforced from then on
_BODILESS = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(slots=True, init=False)  # one per request: see `http1.framing.Data`
class Identity:
    """What the upstream is told about the caller: the `X-Gateway-*` headers, a signed
    `X-Gateway-Identity` token (§15), or both; nothing on a public route."""

    principal: Principal | None
    headers: bool
    token: str | None

    def __init__(
        self, principal: Principal | None, headers: bool = True, token: str | None = None
    ) -> None:
        self.principal, self.headers, self.token = principal, headers, token


ANONYMOUS = Identity(None)


class Incoming(Protocol):
    """What forwarding reads of a request's head (`edge.inbound.Exchange`)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]: ...  # a list: iterated natively
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def fields(self) -> Fields: ...
    @property
    def client(self) -> str: ...  # the client address, sent as X-Forwarded-For
    @property
    def scheme(self) -> str: ...  # http or https as the client spoke it: X-Forwarded-Proto


def _forwarding_lines(request: Incoming, request_id: str) -> bytes:
    # One f-string, encoded once: five lines each built with bytes' % cost 1.6 % more
    # of a proxied request's instructions.
    client, host = request.client or "unknown", request.fields.get(b"host") or ""
    return (
        f"X-Forwarded-For: {client}\r\nX-Real-IP: {client}\r\n"
        f"X-Forwarded-Proto: {request.scheme}\r\nX-Forwarded-Host: {host}\r\n"
        f"X-Request-Id: {request_id}\r\n"
    ).encode("utf-8", "surrogateescape")


class HeaderRules:
    """Which headers travel between a client and its upstream (§6.6), decided per
    header name and remembered: one per gateway, made by the composition root."""

    def __init__(self, names: HeaderNames) -> None:
        self._names = names
        # By spelling: the same few names arrive on every message.
        self._never_forwarded: Memo[bytes, bool] = Memo(self._request_drops, 4096)
        self._dropped_from_response: Memo[bytes, bool] = Memo(self._response_drops, 4096)

    def request_head(
        self,
        request: Incoming,
        identity: Identity,
        request_id: str,
        upstream: UpstreamTarget,
        raw_target: str,
        framing: bytes,
        propagated: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """The request line and headers sent upstream, as bytes, ready for one write.
        `propagated`: the trace context (§19), in place of the client's. `framing`: the
        body's framing lines (or an upgrade's `Connection`/`Upgrade`)."""
        origin = upstream.origin
        target = (origin.path_prefix + raw_target).encode("ascii")
        # Parts of the one join at the end: formatting the request line apart cost more.
        parts = [
            request.method.encode(), b" ", target, b" HTTP/1.1\r\nHost: ", origin.host_header,
            b"\r\n",
        ]  # fmt: skip
        named = self._connection_tokens(request.fields)
        if propagated and request.fields.has(b"traceparent"):
            named |= PROPAGATED  # the client's context is replaced by ours
        names, dropped = self._names, self._never_forwarded
        for name, value in request.raw_headers:  # inline: this runs for every header
            if not dropped.get(name) and not (named and names.folded(name) in named):
                # Four appends: a tuple added to the list cost twice as much.
                parts.append(name)
                parts.append(b": ")
                parts.append(value)
                parts.append(b"\r\n")
        parts.append(_forwarding_lines(request, request_id))
        if identity.token is not None:
            parts.append(f"X-Gateway-Identity: {identity.token}\r\n".encode())
        for name_text, text in propagated:
            parts.append(f"{name_text}: {text}\r\n".encode("utf-8", "surrogateescape"))
        if identity.principal is not None and identity.headers:
            parts.append(identity.principal.upstream_lines)
        parts.append(framing)
        parts.append(b"\r\n")
        return b"".join(parts)

    def response_lines(self, answer: Answer) -> bytes:
        """The upstream's response header lines that travel on: no hop-by-hop header,
        none its `Connection` names, no framing (the gateway frames the body itself)."""
        names, dropped = self._names, self._dropped_from_response
        named: frozenset[str] = frozenset()  # what its `Connection` headers name
        parts: list[bytes] = []
        for name, value in answer.headers:  # inline: this runs for every header
            size = len(name)
            if size < 64 and (_RESPONSE_DROP_LENGTHS >> size) & 1 and dropped.get(name):
                if size == 10 and names.folded(name) == "connection":
                    listed = names.listed(value)
                    if listed:  # (most name nothing but hop-by-hop names: an empty set)
                        named |= listed
                continue
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        if named:  # (rare) it names headers beyond the hop-by-hop ones: those go too
            kept = [(n, v) for n, v in answer.headers if not dropped.get(n)]
            parts = [b"%b: %b\r\n" % (n, v) for n, v in kept if names.folded(n) not in named]
        return b"".join(parts)

    def _request_drops(self, name: bytes) -> bool:
        name_ = self._names.folded(name)
        return name_ in _REQUEST_DROP or name_ == "content-length" or name_.startswith("x-gateway-")

    def _response_drops(self, name: bytes) -> bool:
        return self._names.folded(name) in _RESPONSE_DROP

    def _connection_tokens(self, fields: Fields) -> frozenset[str]:
        values = fields.getall(b"connection")
        if not values:
            return frozenset()
        listed = self._names.listed
        return frozenset().union(*[listed(v.encode("latin-1", "replace")) for v in values])


class Downstream(Incoming, Protocol):
    """A client's request as the gateway's own server holds it (`edge.inbound.Exchange`):
    its head, its body, and the connection the answer is written to."""

    close_after: bool  # close the connection once this answer is written

    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def body_exists(self) -> bool: ...
    async def read(self) -> bytes: ...
    async def read_exactly(self, length: int) -> bytes: ...
    def require_rate(self, bytes_per_second: float, after_seconds: float) -> None: ...
    def chunks(self, first: bytes = b"") -> AsyncIterator[bytes]: ...
    def send_continue(self) -> None: ...
    def head(
        self,
        status: int,
        reason: bytes,
        header_lines: bytes,
        framing: bytes = b"",
        dated: bool = False,
    ) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def abort(self) -> None: ...


class Forwarder:
    """Streams requests to their upstream over the lean client's pooled connections and
    relays the answer to the gateway's own server (WebSocket upgrades: `edge.upgrade`)."""

    def __init__(self, limits: Limits, rules: HeaderRules) -> None:
        self._rules = rules
        self._max_body = limits.max_body_bytes
        self._buffer = limits.buffer_body_bytes
        self._min_rate = limits.min_body_bytes_per_second

    async def relay(
        self,
        exchange: Downstream,
        raw_target: str,
        upstream: UpstreamTarget,
        identity: Identity,
        request_id: str,
        extra: bytes,
        timing: dict[str, float],
        trace: RequestTrace | None = None,
    ) -> None:
        """Forward a request and answer it (under a span of its own when `trace` is
        sampled; with the trace context sent upstream whenever tracing is on). `extra`:
        the gateway's own header lines for the answer, encoded."""
        length = exchange.content_length
        if length is not None and length > self._max_body:
            raise Problem(413, "body-too-large", "the request body is too large")
        if _expects_continue(exchange.fields, exchange.version):
            exchange.send_continue()
        body, stream, framing = await self._body(exchange, length)
        if trace is None or not trace.recording:
            propagated = trace.upstream_headers() if trace is not None else ()
            head = self._rules.request_head(
                exchange, identity, request_id, upstream, raw_target, framing, propagated
            )
            await self._exchange(exchange, upstream, head, body, stream, extra, timing)
            return
        with trace.upstream_span(exchange.method, upstream.base + raw_target) as span:
            propagated = trace.upstream_headers(span)
            head = self._rules.request_head(
                exchange, identity, request_id, upstream, raw_target, framing, propagated
            )
            status = await self._exchange(exchange, upstream, head, body, stream, extra, timing)
            span.set_attribute("http.response.status_code", status)

    async def _exchange(
        self,
        exchange: Downstream,
        upstream: UpstreamTarget,
        head: bytes,
        body: bytes,
        stream: Stream | None,
        extra: bytes,
        timing: dict[str, float],
    ) -> int:
        """Send the request and relay the answer; the upstream's status."""
        answer = await _send(upstream, head, exchange.method, body, stream, timing)
        try:
            lines = self._rules.response_lines(answer) + extra
            await _relay_answer(exchange, answer, lines, upstream.timeout_seconds)
        finally:
            answer.release()
        return answer.status

    async def _body(
        self, exchange: Downstream, length: int | None
    ) -> tuple[bytes, Stream | None, bytes]:
        """(a body sent with the head, or a stream; the framing header). A body up to
        `buffer_body_bytes` arrives whole before an upstream connection is taken, so a
        slow small body holds none (nginx's request buffering); a larger one streams at
        `min_body_bytes_per_second` or more from 10 s after the head."""
        if not exchange.body_exists:
            return b"", None, _empty_framing(exchange.method)
        buffer = self._buffer
        try:
            if length is not None and length <= buffer:
                body = await exchange.read_exactly(length)
                return body, None, b"Content-Length: %d\r\n" % length
            exchange.require_rate(self._min_rate, RATE_GRACE_SECONDS)
            pieces: list[bytes] = []
            seen = 0
            while seen <= buffer:
                piece = await exchange.read()
                if not piece:
                    # Ended within the buffer (a chunked body; `0\r\n\r\n` alone is an
                    # empty body): sent whole, with its length.
                    body = b"".join(pieces)
                    return body, None, b"Content-Length: %d\r\n" % len(body)
                pieces.append(piece)
                seen += len(piece)
        except BodyError as exc:
            raise Problem(exc.status, exc.slug, exc.detail) from None
        chunks = functools.partial(exchange.chunks, b"".join(pieces))
        if length is not None:
            return b"", Stream(chunks, chunked=False), b"Content-Length: %d\r\n" % length
        return b"", Stream(chunks, chunked=True), b"Transfer-Encoding: chunked\r\n"


async def _send(
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
    except UpstreamError as failed:
        raise _failure(failed) from None
    except BodyError as broken:  # (one name per type: mypyc types a name once)
        # The client's body will not arrive whole; the upstream connection that was
        # carrying it is closed, so the upstream never takes it for a complete request.
        raise Problem(broken.status, broken.slug, broken.detail) from None
    except ConnectionError:
        raise Problem(400, "incomplete-body", "the request body ended early") from None
    finally:
        timing["upstream_ms"] = (time.perf_counter() - started) * 1000


def _empty_framing(method: str) -> bytes:
    """A method that normally carries a body says it has none."""
    return b"Content-Length: 0\r\n" if method in _BODY_METHODS else b""


def _expects_continue(fields: Fields, version: tuple[int, int]) -> bool:
    """Whether a client waits on `Expect: 100-continue` (told to send once authorised)."""
    expect = fields.get(b"expect")
    if expect is None or version != (1, 1):
        return False
    if expect.lower() != "100-continue":
        raise Problem(417, "expectation-failed", "only Expect: 100-continue is supported")
    return True


def _failure(exc: Exception) -> Problem:
    if isinstance(exc, UpstreamTimeout):
        return Problem(504, "upstream-timeout", "the upstream timed out")
    return Problem(502, "upstream-unreachable", "the upstream failed")


async def _relay_answer(exchange: Downstream, answer: Answer, lines: bytes, seconds: float) -> None:
    status, reason, length = answer.status, answer.reason.encode("latin-1"), answer.content_length
    dated = answer.dated
    if exchange.method == "HEAD" or status in _BODILESS:
        # No body follows, whatever Content-Length says (for HEAD it describes a GET).
        framing = b""
        if length is not None and exchange.method == "HEAD":
            framing = b"Content-Length: %d\r\n" % length
        exchange.write(exchange.head(status, reason, lines, framing, dated))
        return
    if length is not None and length <= CHUNK:
        # One chunk at most: headers and body in one write.
        try:
            body = await answer.read_all(seconds)
        except UpstreamError as exc:
            raise _failure(exc) from None
        framing = b"Content-Length: %d\r\n" % len(body)
        exchange.write(exchange.head(status, reason, lines, framing, dated) + body)
        return
    chunked = length is None and exchange.version >= (1, 1)
    if length is not None:
        framing = b"Content-Length: %d\r\n" % length
    elif chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        framing = b""  # an HTTP/1.0 client: the body ends with the connection
        exchange.close_after = True
    exchange.write(exchange.head(status, reason, lines, framing, dated))
    try:
        while piece := await answer.next_chunk(seconds):
            exchange.write(chunk(piece) if chunked else piece)
            await exchange.drain()
    except UpstreamError:
        # The status is already sent: cutting the connection is the only honest
        # signal left, so the client cannot mistake a truncated body for a whole one.
        exchange.abort()
        return
    except ConnectionError:
        return  # the client left; the unread answer closes its upstream connection
    if chunked:
        exchange.write(LAST_CHUNK)
