"""A lean HTTP/1.1 client for the request path (WebSocket upgrades stay on aiohttp's).

Keep-alive connections are pooled per upstream (a bounded idle set, each closed
after `IDLE_SECONDS` unused); the request head, and a small body with it, goes
out in one write; responses are parsed by llhttp (httptools), which refuses
response splitting (bad header bytes, two Content-Lengths, Content-Length with
chunked). Flow control both ways: reading from the upstream pauses while more
than `bodyqueue.HIGH_WATER` bytes wait for the client, and writing a streamed body waits
while the upstream's socket buffer is full.

An upstream connection's state is one `Link`, moved only by `_Connection._turn`:

    link      | turn                                          | next link
    ----------+-----------------------------------------------+----------
    IDLE      | SEND      a request goes out                  | SENT
    SENT      | ARRIVING  the first bytes of its answer       | ANSWERING
    ANSWERING | COMPLETE  the answer is whole; may carry more | ANSWERED
    ANSWERING | LAST      the connection ends with this answer| FINAL
    ANSWERED  | RELEASE   pooled for the next request         | IDLE
    FINAL     | COMPLETE, LAST                                | FINAL
    any       | CLOSE     closed by the gateway or the upstream | CLOSED
    CLOSED: final (CLOSE leaves it as it is). Bytes that arrive when no answer is
    awaited (IDLE, ANSWERED, a whole FINAL answer) close the connection.

A close while SENT on a reused connection is the one case that is retried: the
upstream closed an idle connection as the request went out, and no byte of the
request can have been acted on.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway.foundation.timers import Deadline
from gateway.http1.bodyqueue import BodyQueue
from gateway.http1.wire import LAST_CHUNK, chunk

IDLE_SECONDS = 30.0
MAX_IDLE = 128
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class UpstreamError(Exception):
    """The upstream failed or answered something that is not HTTP: 502."""


class UpstreamTimeout(UpstreamError):
    """No response headers, or no next body chunk, within the timeout: 504."""


SSLContext = ssl.SSLContext  # (inside `Origin`, `ssl` is the field)


class _Retry(Exception):
    """A reused connection was closed before any byte of the answer."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream's connections go, parsed once from its URL."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    host_header: bytes
    path_prefix: str
    server_name: str | None = None  # checked in the upstream's certificate (https)

    @classmethod
    def of(
        cls, url: str, context: SSLContext | None = None, server_name: str | None = None
    ) -> Origin:
        """`context`: for an https URL (the system's trust store when not given)."""
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        host = parts.hostname or "127.0.0.1"
        default = port == (443 if secure else 80)
        netloc = host if default else f"{host}:{port}"
        if secure and context is None:
            context = ssl.create_default_context()
        return cls(
            host,
            port,
            context if secure else None,
            netloc.encode("idna"),
            parts.path.rstrip("/"),
            (server_name or host) if secure else None,
        )


class Answer:
    """One response as it arrives: status and headers first, then the body in chunks."""

    def __init__(self, connection: _Connection, head_only: bool) -> None:
        loop = asyncio.get_running_loop()
        self._connection = connection
        self.head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_ready: asyncio.Future[None] = loop.create_future()
        self.body = BodyQueue(connection)
        self.interim = False  # the head being read is a 1xx one: the real one follows

    @property
    def complete(self) -> bool:
        return self.body.complete

    @property
    def error(self) -> BaseException | None:
        return self.body.error

    def fail(self, error: BaseException) -> None:
        if self.body.complete:
            return
        self.body.fail(error)
        if not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved: no warning when nobody waits

    # --- read by the relay -------------------------------------------------------

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                return int(value)
        return None

    @property
    def dated(self) -> bool:
        """It has a `Date` header (relayed as the upstream's)."""
        return any(len(name) == 4 and name.lower() == b"date" for name, _ in self.headers)

    async def wait_headers(self, seconds: float) -> None:
        if not self.headers_ready.done():
            await self._within(self.headers_ready, seconds)
        self.headers_ready.result()  # raises what failed it

    async def next_chunk(self, seconds: float) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        body = self.body
        while not body.ready():
            await self._within(body.waiting(), seconds)
        return body.take()

    async def read_all(self, seconds: float) -> bytes:
        if self.body.complete:
            return self.body.take_all()  # usually so for a small answer: it came with its head
        parts = []
        while chunk := await self.next_chunk(seconds):
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Hand the connection back: pooled if the answer was read whole and may be kept."""
        self._connection.done_with(self)

    async def _within(self, future: asyncio.Future[None], seconds: float) -> None:
        # The connection's own deadline, moved per wait: no loop timer per request.
        patience = self._connection.patience
        patience.set(seconds)
        try:
            await future
        finally:
            patience.clear()


# IntEnum, not Enum, for the table's lookups: see `edge.inbound.Phase`.
class Link(IntEnum):
    IDLE = 1  # no request on it: new, or pooled
    SENT = 2  # a request went out; no byte of its answer yet
    ANSWERING = 3  # its answer is arriving
    ANSWERED = 4  # the answer is whole; it may carry another request
    FINAL = 5  # its answer is arriving or whole, and the connection ends with it
    CLOSED = 6


class LinkTurn(IntEnum):
    SEND = 1
    ARRIVING = 2
    COMPLETE = 3
    LAST = 4
    RELEASE = 5
    CLOSE = 6


_LINK_TURNS: dict[tuple[Link, LinkTurn], Link] = {
    (Link.IDLE, LinkTurn.SEND): Link.SENT,
    (Link.SENT, LinkTurn.ARRIVING): Link.ANSWERING,
    (Link.ANSWERING, LinkTurn.COMPLETE): Link.ANSWERED,
    (Link.ANSWERING, LinkTurn.LAST): Link.FINAL,
    (Link.ANSWERED, LinkTurn.RELEASE): Link.IDLE,
    (Link.FINAL, LinkTurn.COMPLETE): Link.FINAL,
    (Link.FINAL, LinkTurn.LAST): Link.FINAL,
}
for _link in Link:
    _LINK_TURNS[(_link, LinkTurn.CLOSE)] = Link.CLOSED
# The table indexed [link][turn]: a turn looked up without building and hashing a tuple.
_NEXT_LINK: list[list[Link | None]] = [
    [_LINK_TURNS.get((Link(link), LinkTurn(turn))) if link and turn else None for turn in range(7)]
    for link in range(7)
]


class _Connection(asyncio.Protocol):
    """One connection to an upstream; its state is `link` (see the module's table)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.link = Link.IDLE
        self._paused = False
        self._writable: asyncio.Event = asyncio.Event()
        self._writable.set()
        self._can_write = True  # as `_writable`, read per request: Event.is_set() is a Python call
        loop = asyncio.get_running_loop()
        self.idle = Deadline(loop, self.close)  # while pooled
        self.patience = Deadline(loop, self._timed_out)  # while waiting on the upstream

    def _turn(self, turn: LinkTurn) -> Link:
        link = _NEXT_LINK[self.link][turn]
        if link is None:
            raise RuntimeError(
                f"upstream connection: {turn.name.lower()} while {self.link.name.lower()}"
            )
        self.link = link
        return link

    @property
    def closed(self) -> bool:
        return self.link is Link.CLOSED

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has the methods but not the asyncio base class.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link is Link.SENT:
            self._turn(LinkTurn.ARRIVING)
        elif (link is not Link.ANSWERING and link is not Link.FINAL) or self._answered():
            self.close()  # bytes nobody asked for: this connection is unusable
            return
        answer = self.answer
        assert answer is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            answer.fail(UpstreamError("the upstream's response is not valid HTTP/1.1"))
            self.close()

    def _answered(self) -> bool:
        return self.answer is None or self.answer.complete

    def _closed_error(self) -> Exception:
        """A write on a closed connection: retried when no byte of the answer came."""
        error = self.answer.error if self.answer is not None else None
        if error is None or isinstance(error, _Retry):
            return _Retry()
        return UpstreamError("the upstream closed the connection")

    def connection_lost(self, exc: Exception | None) -> None:
        sent = self.link is Link.SENT
        self._turn(LinkTurn.CLOSE)
        self._can_write = True
        self._writable.set()
        answer = self.answer
        if answer is None or answer.complete:
            return
        if sent:
            answer.fail(_Retry())
        elif answer.headers_ready.done() and answer.content_length is None and not _chunked(answer):
            answer.body.end()  # a body delimited by the connection's end (HTTP/1.0 style)
        else:
            answer.fail(UpstreamError("the upstream closed the connection mid-response"))

    def pause_writing(self) -> None:
        self._can_write = False
        self._writable.clear()

    def resume_writing(self) -> None:
        self._can_write = True
        self._writable.set()

    # --- httptools callbacks -------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        assert self.answer is not None
        self.answer.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.answer is not None
        self.answer.headers.append((name, value))

    def on_headers_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            answer.headers.clear()
            answer.interim = True
            return
        answer.status = status
        if not answer.headers_ready.done():
            answer.headers_ready.set_result(None)
        if answer.head_only:
            # llhttp cannot be told this answered a HEAD: it would wait for the body
            # its Content-Length describes. Take the message as complete; never reuse.
            self._turn(LinkTurn.LAST)
            answer.body.end()

    def on_body(self, body: bytes) -> None:
        assert self.answer is not None
        if not self.answer.complete:
            self.answer.body.put(body)

    def on_message_complete(self) -> None:
        assert self.answer is not None
        if self.answer.interim:
            self.answer.interim = False
            return
        self._turn(LinkTurn.COMPLETE if self._parser.should_keep_alive() else LinkTurn.LAST)
        self.answer.body.end()

    # --- used by the pool and the answer ----------------------------------------------

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def send(self, answer: Answer) -> None:
        """A request starts on this connection; its answer will be `answer`."""
        self.answer = answer
        if self.link is Link.IDLE:
            self._turn(LinkTurn.SEND)

    def write_now(self, data: bytes) -> bool:
        """Write; False when the upstream's socket buffer is full (then await `writable`)."""
        link = self.link
        if link is Link.CLOSED or self.transport is None:
            raise self._closed_error()
        self.transport.write(data)
        return self._can_write

    async def write(self, data: bytes) -> None:
        if not self.write_now(data):
            await self.writable()

    async def writable(self) -> None:
        await self._writable.wait()

    def done_with(self, answer: Answer) -> None:
        self.answer = None
        if self.link is Link.ANSWERED and answer.error is None:
            self._turn(LinkTurn.RELEASE)
            self.resume_reading()
            self._pool.release(self)
        else:
            self.close()

    def _timed_out(self) -> None:
        if self.answer is not None:
            self.answer.fail(UpstreamTimeout("upstream timed out"))

    def close(self) -> None:
        self._turn(LinkTurn.CLOSE)
        self.idle.stop()
        self.patience.stop()
        if self.transport is not None:
            self.transport.close()


def _chunked(answer: Answer) -> bool:
    return any(
        n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in answer.headers
    )


BodyChunks = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class Stream:
    """A request body too large to send with the head: its chunks, and how to frame them."""

    chunks: BodyChunks
    chunked: bool  # else the head carries its Content-Length


class Pool:
    """Keep-alive connections to one upstream."""

    def __init__(
        self, origin: Origin, connect_timeout: float, *, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self.origin = origin
        self._connect_timeout = connect_timeout
        self._idle_seconds = idle_seconds
        self._idle: collections.deque[_Connection] = collections.deque()
        self.opened = 0  # counted for tests: reuse means fewer

    async def send(
        self,
        head: bytes,
        *,
        method: bytes,
        body: bytes = b"",
        stream: Stream | None = None,
        header_timeout: float,
    ) -> Answer:
        """Send one request; returns once the response headers are in."""
        retriable = stream is None and (method in _IDEMPOTENT or not body)
        for attempt in (1, 2):
            connection, reused = await self._acquire()
            answer = Answer(connection, method == b"HEAD")
            connection.send(answer)
            try:
                if not connection.write_now(head + body):
                    await connection.writable()
                if stream is not None:
                    await _send_stream(connection, stream)
                await answer.wait_headers(header_timeout)
                return answer
            except _Retry:
                connection.close()
                if not (reused and retriable and attempt == 1):
                    raise UpstreamError("the upstream closed the connection") from None
                self.close()  # the other idle ones are likely stale too: a fresh connection
            except BaseException:
                connection.close()
                raise
        raise AssertionError("unreachable")

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: likeliest alive
            connection.idle.clear()
            if not connection.closed:
                return connection, True
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.server_name,
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect: {exc.__class__.__name__}") from None
        self.opened += 1
        return protocol

    def release(self, connection: _Connection) -> None:
        if len(self._idle) >= MAX_IDLE:
            connection.close()
            return
        connection.idle.set(self._idle_seconds)
        self._idle.append(connection)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


async def _send_stream(connection: _Connection, stream: Stream) -> None:
    async for piece in stream.chunks():
        if piece:
            await connection.write(chunk(piece) if stream.chunked else piece)
    if stream.chunked:
        await connection.write(LAST_CHUNK)
