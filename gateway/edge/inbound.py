"""The gateway's own HTTP/1.1 server: every request on the proxy and decision
listeners is read by one `http1.RequestReader` and served as an `Exchange`; the
answer leaves with the head and a small body in one write.

A bodiless request is served within the read that brought its head: a door that
needs nothing it must wait for (a cached key's decision, a refusal) answers before
`data_received` returns. Only what must wait (the upstream, PostgreSQL, Redis, a
request body) goes on to the connection's one task, as the `Later` the door
returned (`foundation.soon`), and requests are answered in order either way.

aiohttp's server machinery (its request, response and writer objects, a URL per
request) cost more CPU per request than authentication, policy and the upstream
exchange together. Only an accepted protocol upgrade (WebSocket) leaves this
server: `Exchange.switch` hands the connection, from the upgrade's head on, to
another protocol for the rest of its life, the way h11 hands over after a switch.

The connection's state is one `Phase`, moved only by `InboundConnection._turn`
through this table (the reader keeps its own, `http1.reader`):

    phase    | turn                                       | next phase
    ---------+--------------------------------------------+-----------
    IDLE     | HEAD   a request's head arrived            | BUSY
    IDLE     | CLOSE  header deadline, shutdown, bad bytes| CLOSED
    BUSY     | DONE   answered; the connection is reused  | IDLE
    BUSY     | LAST   no request after this one          | CLOSING
    BUSY     | CLOSE  answered; the connection ends       | CLOSED
    BUSY     | SWITCH an upgrade was accepted             | SWITCHED
    CLOSING  | LAST                                       | CLOSING
    CLOSING  | CLOSE  its answer is done                  | CLOSED
    any      | LOST   the transport is gone               | CLOSED
    SWITCHED, CLOSED: final (LAST and CLOSE leave them as they are).

Flow control is not part of it: whether reading is paused (a body waits for the
upstream, pipelined requests wait their turn) and whether writing may go on are
the transport's buffers, which change in any phase.

Protocol limits: a header deadline from the accept and from the end of each
response (slowloris), a body deadline for each pause within a request body, a
bound on the header section (431), framing the reader refuses answered as
problem+json and closed. A request body not read to its end when the response
is done closes the connection: its unread bytes are never taken for a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import cast
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from gateway.foundation.problems import CONTENT_TYPE, Problem
from gateway.foundation.soon import Later, Soon
from gateway.foundation.timers import Deadline
from gateway.http1.bodyqueue import BodyQueue
from gateway.http1.fields import Fields
from gateway.http1.messages import BodyTimeout, BodyTooSlow, BrokenBody, IncompleteBody, Reply
from gateway.http1.reader import END, PAUSED, Data, Failure, Head, RequestReader
from gateway.http1.wire import HttpDate, encode_headers, reason_phrase

log = logging.getLogger("gateway.inbound")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange:
    """One request on an inbound connection, and the means to answer it."""

    __slots__ = (
        "_connection",
        "_headers",
        "_rate",
        "arrived",
        "body",
        "body_exists",
        "client",
        "close_after",
        "content_length",
        "fields",
        "method",
        "peer",
        "raw_headers",
        "raw_path",
        "scheme",
        "started",
        "status",
        "switched",
        "version",
    )

    def __init__(self, connection: InboundConnection, head: Head) -> None:
        self._connection = connection
        self.method = head.method
        self.raw_path = head.target  # path and query, as received
        self.version = head.version
        self.raw_headers = head.raw_headers
        self.fields = Fields(head.raw_headers)  # what every request reads (`http1.fields`)
        self.peer = connection.peer
        self.client = self.peer  # the client address, once `trusted_proxies` are applied
        self.scheme = connection.scheme  # as the client spoke it, likewise
        self.content_length = head.content_length
        self._headers: CIMultiDictProxy[str] | None = None
        self.close_after = not head.keep_alive
        self.body = BodyQueue(connection)
        self.body_exists = head.chunked or bool(head.content_length)
        if not self.body_exists:
            self.body.end()
        # For a body's minimum rate; a request without one (most) skips the clock read.
        self.arrived = connection.loop.time() if self.body_exists else 0.0
        self._rate: MinimumRate | None = None
        self.started = False  # any byte of the response was written
        self.status = 0
        self.switched = False

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            decoded = [
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                for name, value in self.raw_headers
            ]
            self._headers = CIMultiDictProxy(CIMultiDict(decoded))
        return self._headers

    # --- what the gateway's own endpoints read -------------------------------------------

    @property
    def query(self) -> MultiDictProxy[str]:
        return MultiDictProxy(MultiDict(parse_qsl(self.raw_path.partition("?")[2])))

    @property
    def cookies(self) -> dict[str, str]:
        jar: dict[str, str] = {}
        for header in self.headers.getall("Cookie", []):
            for pair in header.split(";"):
                name, sep, value = pair.strip().partition("=")
                if sep and name:
                    jar.setdefault(name, value.strip().strip('"'))
        return jar

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def read_body(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (413 beyond), for an endpoint of the gateway's."""
        if self.content_length is not None and self.content_length > limit:
            raise Problem(413, "body-too-large", "the request body is too large")
        parts, seen = [], 0
        while chunk := await self.read():
            seen += len(chunk)
            if seen > limit:
                raise Problem(413, "body-too-large", "the request body is too large")
            parts.append(chunk)
        return b"".join(parts)

    # --- the request body ------------------------------------------------------------

    async def read(self) -> bytes:
        """The next piece of the request body; b"" once it has ended. Raises a
        `BodyError` when it will not end: the client left, paused too long, or broke it."""
        body = self.body
        if not body.ready():
            deadline = self._connection.body_deadline
            deadline.set(self._connection.lane.body_timeout)
            try:
                while not body.ready():
                    await body.waiting()
            finally:
                deadline.clear()
        return body.take()

    def chunks(self, first: bytes = b"") -> AsyncIterator[bytes]:
        """The rest of the body, piece by piece, after `first` (a piece already read)."""
        return _BodyPieces(self, first)

    async def read_exactly(self, length: int) -> bytes:
        parts, seen = [], 0
        while seen < length:
            chunk = await self.read()
            if not chunk:
                raise IncompleteBody
            parts.append(chunk)
            seen += len(chunk)
        return b"".join(parts)

    def require_rate(self, bytes_per_second: float, after_seconds: float) -> None:
        """From `after_seconds` past the head on, the body must have kept
        `bytes_per_second` on average, else it fails as too slow (408)."""
        if self._rate is None and not self.body.complete:
            self._rate = MinimumRate(
                self._connection.loop, self.body, self.arrived, bytes_per_second, after_seconds
            )

    def finish(self) -> None:
        """The request is done with: no more checks on its body."""
        if self._rate is not None:
            self._rate.stop()

    def send_continue(self) -> None:
        self._connection.write(_CONTINUE)

    # --- the response ----------------------------------------------------------------

    def head(
        self,
        status: int,
        reason: bytes,
        header_lines: bytes,
        framing: bytes = b"",
        dated: bool = False,
    ) -> bytes:
        """The response head: status line, the given header lines (each ending in CRLF),
        `Date` unless they have one (`dated`: an upstream's, relayed), this connection's
        `Connection` header, then `framing`."""
        self.status = status
        if not self.body.complete:
            self.close_after = True  # its unread rest must not be taken for a request
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason), header_lines]
        if not dated:
            parts.append(b"Date: %b\r\n" % self._connection.lane.date())
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

    def reply(self, reply: Reply, extra: dict[str, str]) -> None:
        lines = reply.header_lines + encode_headers({**reply.headers, **extra})
        self.respond(reply.status, reason_phrase(reply.status), lines, reply.body)

    def problem(self, problem: Problem, request_id: str, headers: dict[str, str]) -> None:
        lines, body = refusal(problem, request_id, headers)
        self.respond(problem.status, reason_phrase(problem.status), lines, body)

    def write(self, data: bytes) -> None:
        self.started = True
        self._connection.write(data)

    async def drain(self) -> None:
        await self._connection.drain()

    def abort(self) -> None:
        """Cut the connection: the only honest end of a response that cannot be finished."""
        self.close_after = True
        self._connection.abort()

    @property
    def gone(self) -> bool:
        """The client closed its connection."""
        return self._connection.lost

    def switch(self, protocol: asyncio.Protocol) -> None:
        """Hand the connection, from the bytes after this request's head on, to
        `protocol` for good."""
        self.switched = self.started = True
        self._connection.switch(protocol)


def refusal(problem: Problem, request_id: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """The header lines and body of a refusal on the gateway's own server, whether a
    request was read (`Exchange.problem`) or its bytes were refused before that."""
    merged = {**problem.headers, **headers, "X-Request-Id": request_id}
    merged["Content-Type"] = CONTENT_TYPE
    return encode_headers(merged), problem.body(request_id)


class _BodyPieces:
    """`Exchange.chunks`: a class, not an async generator, which mypyc cannot compile."""

    __slots__ = ("_exchange", "_first")

    def __init__(self, exchange: Exchange, first: bytes) -> None:
        self._exchange = exchange
        self._first = first

    def __aiter__(self) -> _BodyPieces:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            piece, self._first = self._first, b""
            return piece
        piece = await self._exchange.read()
        if not piece:
            raise StopAsyncIteration
        return piece


class MinimumRate:
    """A body's average rate floor (nginx's buffering and Apache's `MinRate` answer the
    same trickle): checked by one timer that sleeps until the moment the bytes received
    so far would fall below the floor."""

    __slots__ = ("_body", "_loop", "_rate", "_since", "_timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        body: BodyQueue,
        since: float,
        bytes_per_second: float,
        after_seconds: float,
    ) -> None:
        self._loop, self._body, self._since, self._rate = loop, body, since, bytes_per_second
        self._timer: asyncio.TimerHandle | None = loop.call_at(since + after_seconds, self._check)

    def _check(self) -> None:
        self._timer = None
        body = self._body
        if body.complete or body.error is not None:
            return
        now = self._loop.time()
        if body.received < self._rate * (now - self._since):
            body.fail(BodyTooSlow())
            return
        due = self._since + body.received / self._rate
        self._timer = self._loop.call_at(max(due, now + 1.0), self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# None once the request is answered; a `Later` for the rest when it must wait (the
# upstream, PostgreSQL, a body), awaited on the connection's task.
Serve = Callable[[Exchange], "Soon[None]"]


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_body_bytes: int


class Lane:
    """What every connection of one listener shares: its entry point and limits."""

    def __init__(
        self, serve: Serve, limits: Limits, unreadable: Callable[[str, int, str], str]
    ) -> None:
        """`unreadable(client, status, slug)`: records bytes refused before they were a
        request (the access log, metrics) and returns the request id to answer with."""
        self.serve = serve
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        self.unreadable = unreadable
        self.date = HttpDate()
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
            if connection.phase is not Phase.CLOSED:
                connection.abort()  # still serving past the grace; the closed ones
                # are sending their last answer, which an abort would throw away


# IntEnum, not Enum: each turn looks up a (phase, turn) pair, and an Enum member's hash
# is a Python-level call (an IntEnum's is int's): with Enum, `make count` measured 7.7 %
# more instructions per proxied request.
class Phase(IntEnum):
    IDLE = 1  # waiting for a request's head (the header deadline runs)
    BUSY = 2  # a request is served; its body may still be arriving
    CLOSING = 3  # serving the last request; what arrives is not read
    SWITCHED = 4  # handed to another protocol for good
    CLOSED = 5  # closed, or the client left


class Turn(IntEnum):
    HEAD = 1
    DONE = 2
    LAST = 3
    CLOSE = 4
    SWITCH = 5
    LOST = 6


_TURNS: dict[tuple[Phase, Turn], Phase] = {
    (Phase.IDLE, Turn.HEAD): Phase.BUSY,
    (Phase.IDLE, Turn.CLOSE): Phase.CLOSED,
    (Phase.BUSY, Turn.DONE): Phase.IDLE,
    (Phase.BUSY, Turn.LAST): Phase.CLOSING,
    (Phase.BUSY, Turn.CLOSE): Phase.CLOSED,
    (Phase.BUSY, Turn.SWITCH): Phase.SWITCHED,
    (Phase.CLOSING, Turn.LAST): Phase.CLOSING,
    (Phase.CLOSING, Turn.CLOSE): Phase.CLOSED,
    (Phase.SWITCHED, Turn.LAST): Phase.SWITCHED,
    (Phase.SWITCHED, Turn.CLOSE): Phase.SWITCHED,
    (Phase.CLOSED, Turn.LAST): Phase.CLOSED,
    (Phase.CLOSED, Turn.CLOSE): Phase.CLOSED,
}
for _phase in Phase:
    _TURNS[(_phase, Turn.LOST)] = Phase.CLOSED
# The table indexed [phase][turn]: a turn looked up without building and hashing a tuple.
_NEXT_PHASE: list[list[Phase | None]] = [
    [_TURNS.get((Phase(phase), Turn(turn))) if phase and turn else None for turn in range(7)]
    for phase in range(6)
]


class InboundConnection(asyncio.Protocol):
    """One client connection: its bytes read by a `RequestReader`, requests served in
    order; its state is `phase` (see the module's table)."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.loop = asyncio.get_running_loop()
        self._reader = RequestReader(
            max_header_bytes=lane.max_header_bytes, max_body_bytes=lane.max_body_bytes
        )
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        self.scheme = "http"
        self.phase = Phase.IDLE
        self._exchange: Exchange | None = None  # the request being served
        self._next: Later[None] | None = None  # for the connection's task to finish next
        self._task: asyncio.Task[None] | None = None
        self._waiting: asyncio.Future[None] | None = None  # the task, between requests
        self._header_deadline = Deadline(self.loop, self._headers_late)
        self.body_deadline = Deadline(self.loop, self._body_late)
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writable = True

    @property
    def lost(self) -> bool:
        """Closed, by the client or by the gateway: nothing more is written."""
        return self.phase is Phase.CLOSED

    def _turn(self, turn: Turn) -> Phase:
        phase = _NEXT_PHASE[self.phase][turn]
        if phase is None:
            raise RuntimeError(f"connection: {turn.name.lower()} while {self.phase.name.lower()}")
        self.phase = phase
        return phase

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has the methods but not the asyncio base class.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self.lane.connections.add(self)
        self._header_deadline.set(self.lane.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._turn(Turn.LOST)
        self.lane.connections.discard(self)
        self._header_deadline.stop()
        self.body_deadline.stop()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))
        if self._exchange is not None:
            self._exchange.body.fail(IncompleteBody())
        self._wake_task()  # between requests: it ends

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is Phase.IDLE or phase is Phase.BUSY:
            self._reader.receive(data)
            self._read_events()
        # CLOSING: answering the last request this connection gets; nothing is read.

    # --- reading -------------------------------------------------------------------------

    def _read_events(self) -> None:
        reader = self._reader
        while True:
            event = reader.next_event()
            kind = type(event)
            if kind is Data:
                assert self._exchange is not None
                self._exchange.body.put(cast(Data, event).data)
            elif kind is Head:
                self._start(cast(Head, event))
                if self.phase is not Phase.BUSY and self.phase is not Phase.IDLE:
                    return  # answered at once, and the connection ends with it
            elif event is END:
                assert self._exchange is not None
                self._exchange.body.end()
            elif kind is Failure:
                self._failed(cast(Failure, event))
                return
            else:
                if event is PAUSED and reader.buffered > self.lane.max_header_bytes:
                    self.pause_reading()  # pipelined requests wait their turn, bounded
                return

    def _start(self, head: Head) -> None:
        self._turn(Turn.HEAD)
        self._header_deadline.clear()
        exchange = Exchange(self, head)
        self._exchange = exchange
        if exchange.body_exists:
            # Served on the task, once this read's bytes of its body are taken.
            pending: Later[None] | None = Later(self._serve_later(exchange))
        else:
            # Served at once, here: a request that needs nothing it must wait for (a
            # cached key's decision, a refusal) is answered before this callback returns,
            # with no task woken and no coroutine made for the envelope, the door and
            # the decider (what the task's wake-up itself cost was small).
            try:
                pending = self.lane.serve(exchange)
            except Exception:
                self._serving_failed(exchange)
                pending = None
            if pending is None:
                self._finished(exchange, reading=True)
                return
        self._next = pending
        if self._task is None or self._task.done():
            # One task per connection, woken per request that waits: a task per request
            # cost more (creation and registration) than routing and authenticating it.
            self._task = self.loop.create_task(self._serve_all())
            self.lane.tasks.add(self._task)
            self._task.add_done_callback(self.lane.tasks.discard)
        else:
            self._wake_task()

    def _failed(self, failure: Failure) -> None:
        """Bytes that are not HTTP/1.1: nothing more is read from this connection."""
        exchange = self._exchange
        if exchange is not None:
            # Within a body: the request's task answers (or cuts a begun answer).
            self._turn(Turn.LAST)
            exchange.close_after = True
            exchange.body.fail(BrokenBody(failure.status, failure.slug, failure.detail))
            return
        self._header_deadline.clear()
        problem = Problem(failure.status, failure.slug, failure.detail)
        request_id = self.lane.unreadable(self.peer, failure.status, failure.slug)
        framing = {"Date": self.lane.date().decode(), "Connection": "close"}
        lines, body = refusal(problem, request_id, framing)
        self.write(
            b"HTTP/1.1 %d %b\r\n%bContent-Length: %d\r\n\r\n%b"
            % (failure.status, reason_phrase(failure.status), lines, len(body), body)
        )
        self._close()

    # --- serving -----------------------------------------------------------------------

    def _wake_task(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _serve_all(self) -> None:
        """The rest of each request that had to wait, in turn."""
        while True:
            pending, self._next = self._next, None
            if pending is None:
                if self.phase is not Phase.IDLE:
                    return
                self._waiting = self.loop.create_future()
                await self._waiting
                continue
            exchange = self._exchange
            assert exchange is not None
            try:
                await pending
            except Exception:
                self._serving_failed(exchange)
            finally:
                self._finished(exchange, reading=False)

    async def _serve_later(self, exchange: Exchange) -> None:
        pending = self.lane.serve(exchange)
        if pending is not None:
            await pending

    def _serving_failed(self, exchange: Exchange) -> None:
        # The envelope answers the request's own failures; this is the last guard, so
        # that a client never waits on a connection nobody serves any more.
        log.exception("unexpected error serving a request")
        exchange.abort()

    def _finished(self, exchange: Exchange, *, reading: bool) -> None:
        """`reading`: called from `_read_events`, which goes on to a pipelined request."""
        self._exchange = None
        exchange.finish()
        phase = self.phase
        if phase is Phase.CLOSED or phase is Phase.SWITCHED:
            return
        if phase is Phase.CLOSING or exchange.close_after or not exchange.body.complete:
            self._close()
            return
        self._turn(Turn.DONE)
        self._reader.next_request()
        self._header_deadline.set(self.lane.header_timeout)
        self.resume_reading()
        if not reading and self._reader.buffered:
            self._read_events()  # a pipelined request (else the next bytes bring it)

    def switch(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        rest = self._reader.switch()
        self._turn(Turn.SWITCH)
        self.lane.connections.discard(self)
        self._header_deadline.stop()
        self.body_deadline.stop()
        transport.set_protocol(protocol)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        protocol.connection_made(transport)
        if rest:
            protocol.data_received(rest)

    def _close(self) -> None:
        """End the connection once what was written has gone out."""
        self._turn(Turn.CLOSE)
        if self._transport is not None:
            self._transport.close()
        self._wake_task()

    # --- writing and flow control --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.lost:
            self._transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        if self._writable:
            return
        self._drain_waiter = self.loop.create_future()
        await self._drain_waiter

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        """Cut the connection now (what was written but not sent is lost)."""
        self._turn(Turn.LAST if self.phase is Phase.BUSY else Turn.CLOSE)
        if self._transport is not None:
            self._transport.abort()

    def close_when_idle(self) -> None:
        """At shutdown: close now if no request is served, else after its answer."""
        if self.phase is Phase.IDLE:
            self._close()
        else:
            self._turn(Turn.LAST)

    # --- deadlines -----------------------------------------------------------------------

    def _headers_late(self) -> None:
        if self.phase is Phase.IDLE:
            self._close()

    def _body_late(self) -> None:
        if self._exchange is not None:
            self._exchange.body.fail(BodyTimeout())
