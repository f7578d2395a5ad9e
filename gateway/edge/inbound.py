"""The proxy listener's own HTTP/1.1 server: llhttp (httptools), one task per connection.

aiohttp's server machinery (its request, response and writer objects, a URL per
request) cost more CPU per request than authentication, policy and the upstream
exchange together. Here a request is parsed by llhttp, served by the pipeline as
an `Exchange` on its connection's task, and answered with the head and a small
body in one write.

Requests the gateway answers itself with aiohttp handlers — the API keys page,
actor tokens, JWKS, CORS preflights — and protocol upgrades (WebSocket) hand
the connection, bytes as received, to aiohttp's server for the rest of its life.

Protocol limits, as the aiohttp listener had them: a header deadline from the
accept and from the end of each response (slowloris), a bound on the header
section (431), parse errors as problem+json 400s with the connection closed. A
request body not read to its end when the response is done closes the
connection: its unread bytes are never taken for the next request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# The same marks as for an upstream's answer: request body bytes buffered before
# reading from the client pauses, and resumes.
from gateway.forward.client import HIGH_WATER, LOW_WATER
from gateway.forward.proxy import IncompleteBody, encode_headers
from gateway.problems import CONTENT_TYPE, Problem
from gateway.timers import Deadline

log = logging.getLogger("gateway.inbound")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Stop(Exception):
    """Raised in a parser callback to stop parsing where the current message ends."""


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _Date:
    """The `Date` header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


http_date = _Date()


class Exchange:
    """One request on an inbound connection, and the means to answer it."""

    __slots__ = (
        "_body_waiter",
        "_buffered",
        "_chunks",
        "_connection",
        "_headers",
        "body_complete",
        "body_failed",
        "chunked",
        "close_after",
        "content_length",
        "method",
        "peer",
        "raw_headers",
        "raw_path",
        "started",
        "status",
        "version",
    )

    def __init__(
        self,
        connection: InboundConnection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        raw_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self._connection = connection
        self.method = method
        self.raw_path = raw_path  # path and query, as received
        self.version = version
        self.raw_headers = raw_headers
        self.peer = connection.peer
        self._headers: CIMultiDictProxy[str] | None = None
        self.close_after = not keep_alive
        self.content_length: int | None = None
        self.chunked = False
        self.body_complete = False
        self.body_failed = False  # the connection ended, or the chunked framing broke
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self.started = False  # any byte of the response was written
        self.status = 0

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict(
                    (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                    for name, value in self.raw_headers
                )
            )
        return self._headers

    @property
    def body_exists(self) -> bool:
        return self.chunked or bool(self.content_length)

    # --- the request body ------------------------------------------------------------

    def _add_chunk(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _end_body(self) -> None:
        self.body_complete = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._body_waiter = self._body_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next piece of the request body; b"" once it has ended."""
        while not self._chunks:
            if self.body_complete:
                return b""
            if self.body_failed or self._connection.lost:
                raise IncompleteBody
            self._body_waiter = asyncio.get_running_loop().create_future()
            await self._body_waiter
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER:
            self._connection.resume_reading()
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def read_exactly(self, length: int) -> bytes:
        parts, seen = [], 0
        while seen < length:
            chunk = await self.read()
            if not chunk:
                raise IncompleteBody
            parts.append(chunk)
            seen += len(chunk)
        return b"".join(parts)

    def send_continue(self) -> None:
        self._connection.write(_CONTINUE)

    # --- the response ----------------------------------------------------------------

    def head(self, status: int, reason: bytes, header_lines: bytes, framing: bytes = b"") -> bytes:
        """The response head: status line, the given header lines (each ending in CRLF),
        `Date` unless given, this connection's `Connection` header, then `framing`."""
        self.status = status
        if not self.body_complete:
            self.close_after = True  # its unread rest must not be taken for a request
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason), header_lines]
        if b"\ndate:" not in b"\n" + header_lines.lower():
            parts.append(b"Date: %b\r\n" % http_date())
        if self.close_after:
            parts.append(b"Connection: close\r\n")
        elif self.version == (1, 0):
            parts.append(b"Connection: keep-alive\r\n")
        parts += (framing, b"\r\n")
        return b"".join(parts)

    def respond(self, status: int, reason: bytes, header_lines: bytes, body: bytes) -> None:
        """A whole response with a known body, in one write."""
        framing = b"Content-Length: %d\r\n" % len(body)
        send = b"" if self.method == "HEAD" else body
        self.write(self.head(status, reason, header_lines, framing) + send)

    def problem(self, problem: Problem, request_id: str, headers: dict[str, str]) -> None:
        merged = {**problem.headers, **headers, "X-Request-Id": request_id}
        merged["Content-Type"] = CONTENT_TYPE
        self.respond(
            problem.status, reason_phrase(problem.status), encode_headers(merged),
            problem.body(request_id),
        )  # fmt: skip

    def write(self, data: bytes) -> None:
        self.started = True
        self._connection.write(data)

    async def drain(self) -> None:
        await self._connection.drain()

    def abort(self) -> None:
        """Cut the connection: the only honest end of a response that cannot be finished."""
        self.close_after = True
        self._connection.abort()


Serve = Callable[[Exchange], Awaitable[None]]
HandOff = Callable[[Exchange], bool]
Fallback = Callable[[], asyncio.Protocol]


class Lane:
    """What every inbound connection shares: the pipeline entry points and the limits."""

    def __init__(
        self,
        serve: Serve,
        hands_off: HandOff,
        fallback: Fallback,
        *,
        header_timeout: float,
        max_header_bytes: int,
        new_request_id: Callable[[], str],
    ) -> None:
        self.serve = serve
        self.hands_off = hands_off
        self.fallback = fallback
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.new_request_id = new_request_id
        self.connections: set[InboundConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def protocol(self) -> InboundConnection:
        return InboundConnection(self)

    async def shutdown(self, grace_seconds: float) -> None:
        """Close idle connections, let requests in flight finish within the grace period."""
        for connection in list(self.connections):
            connection.close_when_idle()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace_seconds)
        for connection in list(self.connections):
            connection.abort()


class InboundConnection(asyncio.Protocol):
    """One client connection: requests parsed by llhttp, served one at a time."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        self._buffer = bytearray()
        self._exchange: Exchange | None = None  # the request being served
        self._next: Exchange | None = None  # for the connection's task to serve next
        self._task: asyncio.Task[None] | None = None
        self._waiting: asyncio.Future[None] | None = None  # the task, between requests
        self._reading_body = False
        self._remaining: int | None = None  # Content-Length body bytes still to feed
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._keep_alive = True
        self._message_done = False
        self._deadline = Deadline(self._loop, self._expire)
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writable = True
        self.lost = False
        self._closing = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has the methods but not the asyncio base class.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self._lane.connections.add(self)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._lane.connections.discard(self)
        self._deadline.stop()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))
        if self._exchange is not None:
            self._exchange._wake()
        self._wake_task()  # between requests: it ends

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # answering the last request this connection gets
        if self._reading_body:
            self._feed_body(data)
        elif self._exchange is None:
            self._next_request(self._take_buffer() + data if self._buffer else data)
        else:
            self._buffer += data
            if len(self._buffer) > self._lane.max_header_bytes:
                self.pause_reading()  # pipelined requests wait their turn, bounded

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._message_done:
            raise _Stop  # a pipelined request right behind a chunked body: see _feed_body
        self._url = b""
        self._raw_headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: llhttp resets its flags once a message without a body completes.
        self._keep_alive = self._parser.should_keep_alive()
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        if self._exchange is not None:
            self._exchange._add_chunk(body)

    def on_message_complete(self) -> None:
        self._message_done = True
        self._reading_body = False
        if self._exchange is not None:
            self._exchange._end_body()

    # --- parsing -----------------------------------------------------------------------

    def _next_request(self, pending: bytes) -> None:
        """Parse the head at the start of `pending`, if whole, and start serving it.

        Only the head's own bytes go to the parser, so where the request starts is
        known: a hand-off passes aiohttp the bytes exactly as received.
        """
        while not self._closing:
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                if len(pending) > self._lane.max_header_bytes + 4:
                    self._refuse_head(
                        Problem(431, "headers-too-large", "the request headers are too large")
                    )
                else:
                    self._buffer += pending
                return
            head_end = end + 4
            self._head_done = self._message_done = False
            upgrade = False
            try:
                self._parser.feed_data(pending[:head_end])  # no copy when it is all of it
            except httptools.HttpParserUpgrade:
                upgrade = True
            except httptools.HttpParserError:
                self._refuse_head(Problem(400, "bad-request", "the request could not be parsed"))
                return
            if self._head_done:
                self._start(pending, head_end, upgrade)
                return
            pending = pending[head_end:]  # empty lines before a request line

    def _start(self, pending: bytes, head_end: int, upgrade: bool) -> None:
        self._cancel_deadline()
        parser = self._parser
        exchange = Exchange(
            self,
            parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            _version(parser.get_http_version()),
            self._raw_headers,
            self._keep_alive,
        )
        if upgrade or self._lane.hands_off(exchange):
            self._hand_off(pending)
            return
        length = _content_length(self._raw_headers)
        exchange.content_length = length
        exchange.chunked = not self._message_done and length is None
        rest = pending[head_end:]
        self._exchange = exchange
        if self._message_done:
            exchange._end_body()
            if rest:
                self._buffer += rest
        else:
            self._reading_body = True
            self._remaining = length
            if rest:
                self._feed_body(rest)
        self._dispatch(exchange)

    def _feed_body(self, data: bytes) -> None:
        remaining = self._remaining
        if remaining is not None:
            # A Content-Length body: feed exactly its bytes; what follows is the next request.
            take, rest = data[:remaining], data[remaining:]
            self._remaining = remaining - len(take)
            data = take
            if rest:
                self._buffer += rest
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # Where a chunked body ended inside this read the parser does not report, so
            # a request pipelined right behind one (_Stop) is not served: the connection
            # closes after the answer. Any other error is a malformed body.
            self._stop_reading()
            exchange = self._exchange
            if exchange is not None and not isinstance(exc.__context__, _Stop):
                exchange.body_failed = True
                exchange._wake()

    def _stop_reading(self) -> None:
        self._reading_body = False
        if self._exchange is not None:
            self._exchange.close_after = True
        self._buffer.clear()
        self._closing = True

    def _take_buffer(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _hand_off(self, data: bytes) -> None:
        """Give the connection, with the bytes of this request on, to aiohttp's server."""
        transport = self._transport
        assert transport is not None
        self._lane.connections.discard(self)
        self._deadline.stop()
        self._closing = True
        self._wake_task()  # it ends: aiohttp serves this connection from here on
        handler = self._lane.fallback()
        transport.set_protocol(handler)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        handler.connection_made(transport)
        handler.data_received(data)

    def _refuse_head(self, problem: Problem) -> None:
        """A head that cannot be served: a problem+json answer, then the connection closes."""
        self._closing = True
        self._cancel_deadline()
        exchange = Exchange(self, "GET", "", (1, 1), [], keep_alive=False)
        exchange.problem(problem, self._lane.new_request_id(), {})
        self._buffer.clear()
        if self._transport is not None:
            self._transport.close()

    # --- serving -----------------------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        """Hand the request to this connection's task, started with its first request.

        One task per connection, woken per request: a new task per request cost more
        (task creation and registration) than routing and authenticating it.
        """
        self._next = exchange
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._serve_all())
            self._lane.tasks.add(self._task)
            self._task.add_done_callback(self._lane.tasks.discard)
        else:
            self._wake_task()

    def _wake_task(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _serve_all(self) -> None:
        while True:
            exchange, self._next = self._next, None
            if exchange is None:
                if self._closing or self.lost:
                    return
                self._waiting = self._loop.create_future()
                await self._waiting
                continue
            try:
                await self._lane.serve(exchange)
            except Exception:
                # The pipeline answers its own failures; this is the last guard, so
                # that a client never waits on a connection nobody serves any more.
                log.exception("unexpected error serving a request")
                exchange.abort()
            finally:
                self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        self._exchange = None
        if self.lost:
            return
        if exchange.close_after or not exchange.body_complete or self._closing:
            self._closing = True
            if self._transport is not None:
                self._transport.close()
            return
        self._reading_body = False
        self._remaining = None
        self.resume_reading()
        self._arm_deadline()
        if self._buffer:
            self._next_request(self._take_buffer())

    # --- writing and flow control --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.lost:
            self._transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        if self._writable:
            return
        self._drain_waiter = self._loop.create_future()
        await self._drain_waiter

    def pause_reading(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def close_when_idle(self) -> None:
        self._closing = True
        if self._exchange is None and self._transport is not None:
            self._transport.close()
            self._wake_task()

    # --- the header deadline ---------------------------------------------------------------

    def _arm_deadline(self) -> None:
        self._deadline.set(self._lane.header_timeout)

    def _cancel_deadline(self) -> None:
        self._deadline.clear()

    def _expire(self) -> None:
        if self._exchange is None and self._transport is not None:
            self._closing = True
            self._transport.close()


_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


def _version(text: str) -> tuple[int, int]:
    known = _VERSIONS.get(text)
    if known is not None:
        return known
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _content_length(raw_headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in raw_headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return int(value)
    return None
