"""The server side of a client connection (`edge.inbound`), driven by byte scripts
with no socket: the bytes a client sends go to `data_received`, what the gateway
writes and whether it closes is read from a transport that only records.

Each test names the phases the connection goes through (the module's table).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from gateway.edge.inbound import (
    _TURNS,
    Exchange,
    InboundConnection,
    Lane,
    Limits,
    Phase,
    Turn,
)
from gateway.foundation.soon import Later, Soon
from gateway.http1.messages import BodyError
from tests.transports import Recorded

Serve = Callable[[Exchange], Awaitable[None]]


async def echo(exchange: Exchange) -> None:
    """Answers with the method, the path and the body it read."""
    body = await exchange.read_body(1 << 20)
    answer = b"%b %b %b" % (exchange.method.encode(), exchange.raw_path.encode(), body)
    exchange.respond(200, b"OK", b"", answer)


def _unreadable(client: str, status: int, slug: str) -> str:
    return f"req-{status}-{slug}"


def connect_at_once(serve: Callable[[Exchange], Soon[None]]) -> tuple[InboundConnection, Recorded]:
    """A connection whose door answers without waiting when it can (`Serve`)."""
    limits = Limits(5.0, 5.0, max_header_bytes=1024, max_body_bytes=1 << 20)
    connection = Lane(serve, limits, _unreadable).protocol()
    transport = Recorded()
    connection.connection_made(transport)
    return connection, transport


def connect(
    serve: Serve = echo, *, header_timeout: float = 5.0, body_timeout: float = 5.0
) -> tuple[InboundConnection, Recorded, Lane]:
    limits = Limits(header_timeout, body_timeout, max_header_bytes=1024, max_body_bytes=1 << 20)
    lane = Lane(lambda exchange: Later(serve(exchange)), limits, _unreadable)
    connection = lane.protocol()
    transport = Recorded()
    connection.connection_made(transport)
    return connection, transport, lane


def phase(connection: InboundConnection) -> Phase:
    """(A call, not the attribute: mypy would take the phase as fixed across awaits.)"""
    return connection.phase


async def settle() -> None:
    """Let the connection's task run what the bytes so far started."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_keep_alive_requests_are_answered_in_turn_and_the_connection_stays() -> None:
    connection, transport, _ = connect()
    assert phase(connection) is Phase.IDLE
    connection.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert phase(connection) is Phase.BUSY
    await settle()
    assert phase(connection) is Phase.IDLE
    connection.data_received(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    await settle()
    assert transport.responses() == [b"HTTP/1.1 200 OK"] * 2
    assert transport.written.endswith(b"POST /b hi")
    assert phase(connection) is Phase.IDLE and not transport.closed


async def test_pipelined_requests_in_one_read_are_answered_in_order() -> None:
    connection, transport, _ = connect()
    connection.data_received(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"PUT /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    await settle()
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in bytes(transport.written).split(b"HTTP/1.1 ")[1:]]  # fmt: skip
    assert bodies == [b"GET /1 ", b"PUT /2 abc", b"GET /3 "]
    assert phase(connection) is Phase.CLOSED and transport.closed  # the third said close


async def test_connection_close_is_answered_then_closed() -> None:
    connection, transport, _ = connect()
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await settle()
    assert b"Connection: close\r\n" in transport.written
    assert phase(connection) is Phase.CLOSED and transport.closed and not transport.aborted


async def test_bytes_that_are_not_http_are_refused_with_a_problem_and_closed() -> None:
    connection, transport, _ = connect()
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")  # fmt: skip
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/problem+json" in head
    assert json.loads(body)["request_id"] == "req-400-bad-request"  # recorded, then answered
    assert phase(connection) is Phase.CLOSED and transport.closed


async def test_broken_framing_within_a_body_is_answered_by_the_request_and_nothing_after_is_read() -> (
    None
):
    failures: list[BodyError] = []

    async def reads(exchange: Exchange) -> None:
        try:
            await exchange.read_body(1 << 20)
        except BodyError as error:
            failures.append(error)
            exchange.respond(error.status, b"Bad Request", b"", b"")

    connection, transport, _ = connect(reads)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await settle()
    connection.data_received(b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert phase(connection) is Phase.CLOSING
    connection.data_received(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")  # not read
    await settle()
    assert len(failures) == 1 and transport.responses() == [b"HTTP/1.1 400 Bad Request"]
    assert phase(connection) is Phase.CLOSED and transport.closed


async def test_a_body_not_yet_arrived_closes_the_connection_after_the_answer() -> None:
    async def ignores_body(exchange: Exchange) -> None:
        exchange.respond(403, b"Forbidden", b"", b"")

    connection, transport, _ = connect(ignores_body)
    # Its unread rest (which could hold a request of an attacker's) is never read.
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\nGET / HTTP")
    await settle()
    assert b"Connection: close\r\n" in transport.written  # said in the answer, before closing
    assert transport.responses() == [b"HTTP/1.1 403 Forbidden"]
    assert phase(connection) is Phase.CLOSED and transport.closed


async def test_a_body_arrived_whole_but_not_read_keeps_the_connection() -> None:
    async def ignores_body(exchange: Exchange) -> None:
        exchange.respond(403, b"Forbidden", b"", b"")

    connection, transport, _ = connect(ignores_body)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    await settle()
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert transport.responses() == [b"HTTP/1.1 403 Forbidden"] * 2
    assert phase(connection) is Phase.IDLE and not transport.closed


async def test_the_header_deadline_closes_an_idle_connection() -> None:
    connection, transport, _ = connect(header_timeout=0.05)
    connection.data_received(b"GET / HTTP/1.1\r\nHo")  # a head that never ends
    await asyncio.sleep(0.15)
    assert phase(connection) is Phase.CLOSED and transport.closed and transport.written == b""


async def test_a_paused_body_fails_the_request_after_the_body_deadline() -> None:
    failures: list[str] = []

    async def reads(exchange: Exchange) -> None:
        try:
            await exchange.read_body(1 << 20)
        except BodyError as error:
            failures.append(error.slug)
            exchange.respond(error.status, b"Request Timeout", b"", b"")

    connection, transport, _ = connect(reads, body_timeout=0.05)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    await asyncio.sleep(0.15)
    assert failures == ["body-timeout"] and transport.responses() == [b"HTTP/1.1 408 Request Timeout"]  # fmt: skip
    assert phase(connection) is Phase.CLOSED


async def test_the_client_leaving_mid_body_fails_the_read_and_ends_the_connection() -> None:
    failures: list[str] = []

    async def reads(exchange: Exchange) -> None:
        try:
            await exchange.read_body(1 << 20)
        except BodyError as error:
            failures.append(type(error).__name__)

    connection, _, lane = connect(reads)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    await settle()
    connection.connection_lost(None)
    await settle()
    assert failures == ["IncompleteBody"] and phase(connection) is Phase.CLOSED
    assert connection not in lane.connections and not lane.tasks


async def test_shutdown_closes_an_idle_connection_at_once_and_a_busy_one_after_its_answer() -> None:
    release = asyncio.Event()

    async def slow(exchange: Exchange) -> None:
        await release.wait()
        exchange.respond(200, b"OK", b"", b"done")

    idle, idle_transport, lane = connect(slow)
    busy = lane.protocol()
    busy_transport = Recorded()
    busy.connection_made(busy_transport)
    busy.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    stopping = asyncio.create_task(lane.shutdown(grace_seconds=5))
    await settle()
    assert phase(idle) is Phase.CLOSED and idle_transport.closed
    assert phase(busy) is Phase.CLOSING and not busy_transport.closed
    busy.data_received(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # not served: closing
    release.set()
    await stopping
    assert busy_transport.responses() == [b"HTTP/1.1 200 OK"]
    assert b"Connection: close\r\n" not in busy_transport.written  # (decided after the head)
    assert phase(busy) is Phase.CLOSED and busy_transport.closed and not busy_transport.aborted


async def test_shutdown_cuts_what_outlives_the_grace() -> None:
    async def never(exchange: Exchange) -> None:
        await asyncio.Event().wait()

    connection, transport, lane = connect(never)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    await lane.shutdown(grace_seconds=0.05)
    assert transport.aborted and phase(connection) in (Phase.CLOSING, Phase.CLOSED)


async def test_an_accepted_upgrade_hands_over_the_bytes_after_the_head() -> None:
    handed: list[bytes] = []

    class Next(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            handed.append(data)

    async def upgrades(exchange: Exchange) -> None:
        exchange.switch(Next())

    connection, transport, lane = connect(upgrades)
    connection.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    )
    await settle()
    assert phase(connection) is Phase.SWITCHED and isinstance(transport.protocol, Next)
    assert handed == [b"\x81\x00"] and connection not in lane.connections
    assert not transport.closed


async def test_a_serving_error_that_escapes_cuts_the_connection() -> None:
    async def broken(exchange: Exchange) -> None:
        raise ValueError("a bug")

    connection, transport, _ = connect(broken)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert transport.aborted and phase(connection) is Phase.CLOSED


def test_every_phase_has_a_way_out_and_the_final_ones_stay() -> None:
    for each in Phase:
        assert _TURNS[(each, Turn.LOST)] is Phase.CLOSED
    for final in (Phase.SWITCHED, Phase.CLOSED):
        assert {_TURNS[(final, turn)] for turn in (Turn.LAST, Turn.CLOSE)} == {final}
        assert (final, Turn.HEAD) not in _TURNS and (final, Turn.DONE) not in _TURNS
    assert (Phase.BUSY, Turn.HEAD) not in _TURNS  # one request at a time
    assert (Phase.CLOSING, Turn.HEAD) not in _TURNS


async def test_a_turn_the_table_does_not_have_is_refused() -> None:
    connection, _, _ = connect()
    with pytest.raises(RuntimeError, match="done while idle"):
        connection._turn(Turn.DONE)
    assert phase(connection) is Phase.IDLE


def answers_at_once(exchange: Exchange) -> None:
    """A door that needs nothing it must wait for (a cached key's decision)."""
    exchange.respond(200, b"OK", b"", exchange.raw_path.encode())


async def test_a_request_answered_at_once_is_answered_within_the_read_with_no_task() -> None:
    connection, transport = connect_at_once(answers_at_once)
    connection.data_received(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    # Both pipelined requests answered, in order, before data_received returned.
    assert transport.responses() == [b"HTTP/1.1 200 OK"] * 2
    assert transport.written.endswith(b"/2") and b"/1" in transport.written
    assert phase(connection) is Phase.IDLE and connection._task is None
    connection.data_received(b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert transport.responses() == [b"HTTP/1.1 200 OK"] * 3
    assert phase(connection) is Phase.CLOSED and transport.closed


async def test_a_door_that_waits_for_one_request_and_not_the_next_keeps_their_order() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def after_gate(exchange: Exchange) -> None:
        await gate
        answers_at_once(exchange)

    def serve(exchange: Exchange) -> Soon[None]:
        if exchange.raw_path == "/slow":
            return Later(after_gate(exchange))
        answers_at_once(exchange)
        return None

    connection, transport = connect_at_once(serve)
    connection.data_received(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await settle()
    assert transport.written == b"" and phase(connection) is Phase.BUSY  # /fast waits its turn
    gate.set_result(None)
    await settle()
    assert transport.responses() == [b"HTTP/1.1 200 OK"] * 2
    assert transport.written.index(b"/slow") < transport.written.index(b"/fast")
    assert phase(connection) is Phase.IDLE


async def test_a_request_with_a_body_is_served_once_the_bytes_read_with_it_are_taken() -> None:
    seen: list[bool] = []

    def serve(exchange: Exchange) -> Soon[None]:
        seen.append(exchange.body.complete)
        exchange.respond(401, b"Unauthorized", b"", b"")  # refused, its body never read
        return None

    connection, transport = connect_at_once(serve)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    await settle()
    # The whole body had arrived when it was served: the connection is kept.
    assert seen == [True] and transport.responses() == [b"HTTP/1.1 401 Unauthorized"]
    assert phase(connection) is Phase.IDLE and not transport.closed


async def test_a_door_that_fails_at_once_cuts_the_connection() -> None:
    def broken(exchange: Exchange) -> Soon[None]:
        raise RuntimeError("a bug")

    connection, transport = connect_at_once(broken)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.aborted and phase(connection) is Phase.CLOSED
    assert transport.written == b""  # and the pipelined request after it is not served
