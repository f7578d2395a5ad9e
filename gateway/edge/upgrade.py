"""Accepted WebSocket upgrades, on the gateway's own path: decided like any request
(safety, route, credential, scopes, limits), forwarded through the gateway's own
upstream connection, and — once the upstream answers `101` — relayed as bytes both
ways until either side closes, as nginx does. The gateway does not parse frames, so
close codes, subprotocols, extensions and messages of any size pass as they were sent;
an upstream that refuses the upgrade is answered to the client as it was (its status,
headers and body). Nothing after the handshake is ever read as HTTP.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import cast

import httptools

from gateway.edge.decide import Outcome
from gateway.edge.inbound import Exchange
from gateway.edge.record import Recorder
from gateway.forward.proxy import HeaderRules, Identity
from gateway.forward.upstreams import UpstreamTarget
from gateway.foundation.problems import Problem
from gateway.foundation.timers import Deadline
from gateway.http1.fields import Fields
from gateway.http1.wire import HOP_BY_HOP, reason_phrase

_UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
_MAX_REFUSAL = 1024 * 1024  # the body of an upstream's non-101 answer, at most
# The answer's own framing is the gateway's to write, and what the 101 switches to.
_REFUSAL_DROP = HOP_BY_HOP | {"content-length"}


def is_upgrade(method: str, fields: Fields) -> bool:
    return method == "GET" and (fields.get(b"upgrade") or "").lower() == "websocket"


class _Answer:
    """The upstream's answer to the handshake, as httptools reads it."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    @property
    def ends_with_connection(self) -> bool:
        """Its body has neither a length nor chunks: the connection's end ends it."""
        names = {name.lower() for name, _ in self.headers}
        return self.headers_done and not names & {b"content-length", b"transfer-encoding"}

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= _MAX_REFUSAL:
            self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


class _Side(asyncio.Protocol):
    """One end of the relay: what it receives goes to the other end's transport, with
    flow control across (a side that cannot write pauses the other's reading)."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.pipe.idle.set(self.pipe.idle_seconds)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        """One side ended: so does the session, both sides once what each has buffered
        is written (nginx ends an upgraded connection so). A WebSocket ends with its own
        close handshake, which has passed by then; passing a half-close on instead
        left the session open until the side that had not closed (aiohttp's server
        keeps the connection for its keep-alive) or the idle timeout ended it."""
        other = self.other.transport if self.other is not None else None
        if other is not None:
            other.close()
        return False

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()  # after what it has buffered is written


class _UpstreamSide(_Side):
    """The upstream connection: reads the handshake's answer, then relays."""

    def __init__(self, pipe: Pipe) -> None:
        super().__init__(pipe)
        self.answer = _Answer()
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(
            self.answer
        )
        self.head_done = asyncio.get_running_loop().create_future()
        self.rest = b""  # bytes after the 101 head: the first frames

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            super().data_received(data)
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgraded:
            self.rest = data[upgraded.args[0] :]
            self._answered(parser)
            return
        except httptools.HttpParserError:
            self._parser = None
            self._failed(ConnectionError("the upstream's answer is not HTTP"))
            return
        if self.answer.complete or self.answer.size > _MAX_REFUSAL:
            self._answered(parser)

    def _failed(self, error: ConnectionError) -> None:
        if not self.head_done.done():
            self.head_done.set_exception(error)
            self.head_done.exception()  # retrieved: no warning when nobody waits any more

    def _answered(self, parser: httptools.HttpResponseParser) -> None:
        self.answer.status = parser.get_status_code()
        self._parser = None
        if not self.head_done.done():
            self.head_done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._parser is not None and not self.head_done.done():
            if self.answer.ends_with_connection:
                self.answer.complete = True  # (llhttp is never told of the end)
            if self.answer.complete:
                self._answered(self._parser)
            else:
                self._failed(ConnectionError("the upstream closed"))
        super().connection_lost(exc)


class Pipe:
    """One upgraded connection: the client's side and the upstream's, cut when neither
    has sent a byte for `idle_seconds` (nginx's `proxy_read_timeout` for the same)."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.idle = Deadline(asyncio.get_running_loop(), self.abort)
        self.client = _Side(self)
        self.upstream = _UpstreamSide(self)
        self.client.other, self.upstream.other = self.upstream, self.client

    async def ended(self) -> None:
        try:
            await asyncio.gather(self.client.closed, self.upstream.closed)
        finally:
            self.idle.stop()

    def abort(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()


class WebSocketDoor:
    def __init__(self, recorder: Recorder, idle_seconds: float, rules: HeaderRules) -> None:
        self._recorder = recorder
        self._rules = rules
        self._idle_seconds = idle_seconds
        self._pipes: set[Pipe] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def relay(
        self,
        exchange: Exchange,
        raw_target: str,
        upstream: UpstreamTarget,
        identity: Identity,
        request_id: str,
        extra: bytes,
        outcome: Outcome,
    ) -> None:
        """Forward the handshake; on `101` hand the client's connection to the relay
        (recorded when it ends), else answer what the upstream answered."""
        if exchange.body_exists:
            exchange.close_after = True  # what the bytes after it are is anyone's guess
            raise Problem(400, "upgrade-with-body", "an upgrade request cannot carry a body")
        trace = outcome.trace
        propagated: Sequence[tuple[str, str]] = trace.upstream_headers() if trace else ()
        head = self._rules.request_head(
            exchange, identity, request_id, upstream, raw_target, _UPGRADE, propagated
        )
        pipe = Pipe(self._idle_seconds)
        started = time.perf_counter()
        await self._connect(pipe, upstream)
        try:
            assert pipe.upstream.transport is not None
            pipe.upstream.transport.write(head)
            await asyncio.wait_for(
                asyncio.shield(pipe.upstream.head_done), upstream.timeout_seconds
            )
        except TimeoutError:
            pipe.abort()
            raise Problem(504, "upstream-timeout", "the upstream timed out") from None
        except ConnectionError:
            pipe.abort()
            raise Problem(502, "upstream-unreachable", "the upstream failed") from None
        answer = pipe.upstream.answer
        if exchange.gone:
            pipe.abort()  # the client left while the upstream was answering
            return
        if answer.status != 101:
            pipe.abort()
            self._refused(exchange, answer, extra)
            return
        lines = b"".join(b"%b: %b\r\n" % pair for pair in answer.headers)
        exchange.write(b"HTTP/1.1 101 Switching Protocols\r\n" + lines + extra
                       + b"\r\n" + pipe.upstream.rest)  # fmt: skip
        exchange.switch(pipe.client)
        pipe.idle.set(self._idle_seconds)
        self._pipes.add(pipe)
        task = asyncio.get_running_loop().create_task(
            self._record_at_end(pipe, exchange, request_id, outcome, started)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, pipe: Pipe, upstream: UpstreamTarget) -> None:
        origin = upstream.origin
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: pipe.upstream, origin.host, origin.port, ssl=origin.ssl,
                    server_hostname=origin.server_name,
                ),
                upstream.connect_timeout_seconds,
            )  # fmt: skip
        except (OSError, TimeoutError, ssl.SSLError):
            raise Problem(502, "upstream-unreachable", "the upstream failed") from None

    @staticmethod
    def _refused(exchange: Exchange, answer: _Answer, extra: bytes) -> None:
        """The upstream did not switch: its answer, as it gave it, and the connection
        closes (the client's next bytes may already be frames)."""
        kept = [
            (n, v) for n, v in answer.headers if n.decode("latin-1").lower() not in _REFUSAL_DROP
        ]
        exchange.close_after = True
        lines = b"".join(b"%b: %b\r\n" % pair for pair in kept) + extra
        body = b"".join(answer.body)
        exchange.respond(answer.status, reason_phrase(answer.status), lines, body)

    async def _record_at_end(
        self, pipe: Pipe, exchange: Exchange, request_id: str, outcome: Outcome, started: float
    ) -> None:
        try:
            await pipe.ended()
        finally:
            self._pipes.discard(pipe)
            self._recorder.record(
                exchange.method, exchange.raw_path, request_id, 101, outcome, started
            )

    async def shutdown(self, grace_seconds: float) -> None:
        """WebSocket sessions in flight get the grace period, then are cut."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)
        for pipe in list(self._pipes):
            pipe.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
