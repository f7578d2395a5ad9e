"""The upstream side of a proxied request (`forward.client`), driven by byte scripts
with no socket: what the gateway writes is read from a transport that only records,
the upstream's answer is given to `data_received` as it would arrive.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.forward.client import (
    _LINK_TURNS,
    Answer,
    Link,
    LinkTurn,
    Origin,
    Pool,
    UpstreamError,
    UpstreamTimeout,
    _Connection,
    _Retry,
)
from tests.transports import Recorded

GET = b"GET / HTTP/1.1\r\nHost: u\r\n\r\n"


def link(connection: _Connection) -> Link:
    """(A call, not the attribute: mypy would take the state as fixed across awaits.)"""
    return connection.link


def connected(pool: Pool | None = None) -> tuple[_Connection, Recorded, Pool]:
    pool = pool or Pool(Origin.of("http://127.0.0.1:9"), connect_timeout=1.0)
    connection = _Connection(pool)
    transport = Recorded()
    connection.connection_made(transport)
    return connection, transport, pool


def sent(connection: _Connection, head: bytes = GET, *, head_only: bool = False) -> Answer:
    answer = Answer(connection, head_only)
    connection.send(answer)
    connection.write_now(head)
    return answer


async def test_a_keep_alive_answer_goes_back_to_the_pool_and_carries_the_next() -> None:
    connection, transport, pool = connected()
    answer = sent(connection)
    assert link(connection) is Link.SENT and transport.written == GET
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    assert link(connection) is Link.ANSWERING
    await answer.wait_headers(1)
    connection.data_received(b"lo")
    assert await answer.read_all(1) == b"hello" and link(connection) is Link.ANSWERED
    answer.release()
    assert link(connection) is Link.IDLE and not transport.closed
    reused, was_pooled = await pool._acquire()
    assert reused is connection and was_pooled
    second = sent(connection)
    connection.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    await second.wait_headers(1)
    assert second.status == 204 and link(connection) is Link.ANSWERED


@pytest.mark.parametrize(
    "answer_bytes",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_an_answer_that_ends_the_connection_is_never_pooled(answer_bytes: bytes) -> None:
    connection, transport, pool = connected()
    answer = sent(connection)
    connection.data_received(answer_bytes)
    await answer.wait_headers(1)
    assert await answer.read_all(1) == b"ok" and link(connection) is Link.FINAL
    answer.release()
    assert link(connection) is Link.CLOSED and transport.closed and not pool._idle


async def test_the_answer_to_head_is_whole_at_its_head_and_the_connection_not_reused() -> None:
    connection, transport, _ = connected()
    answer = sent(connection, b"HEAD / HTTP/1.1\r\nHost: u\r\n\r\n", head_only=True)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    await answer.wait_headers(1)
    assert answer.complete and await answer.read_all(1) == b"" and link(connection) is Link.FINAL
    answer.release()
    assert transport.closed


async def test_interim_answers_are_passed_over() -> None:
    connection, _, _ = connected()
    answer = sent(connection)
    connection.data_received(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    )
    connection.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    await answer.wait_headers(1)
    assert answer.status == 201 and answer.headers == [(b"Content-Length", b"0")]
    assert link(connection) is Link.ANSWERED


async def test_a_close_before_any_byte_of_the_answer_is_the_retriable_kind() -> None:
    connection, _, _ = connected()
    answer = sent(connection)
    connection.connection_lost(None)
    with pytest.raises(_Retry):
        await answer.wait_headers(1)
    with pytest.raises(_Retry):
        connection.write_now(b"more")
    assert link(connection) is Link.CLOSED


async def test_a_close_within_a_framed_body_fails_it_and_is_not_retried() -> None:
    connection, _, _ = connected()
    answer = sent(connection)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await answer.wait_headers(1)
    connection.connection_lost(None)
    with pytest.raises(UpstreamError, match="mid-response"):
        await answer.read_all(1)
    with pytest.raises(UpstreamError) as raised:
        connection.write_now(b"more")
    assert not isinstance(raised.value, _Retry)


async def test_a_body_without_length_ends_with_the_connection() -> None:
    connection, _, _ = connected()
    answer = sent(connection)
    connection.data_received(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    await answer.wait_headers(1)
    connection.connection_lost(None)
    assert await answer.read_all(1) == b"all of it" and answer.error is None


async def test_bytes_nobody_asked_for_close_a_pooled_connection() -> None:
    connection, transport, pool = connected()
    answer = sent(connection)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await answer.wait_headers(1)
    answer.release()
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # a second, unasked
    assert link(connection) is Link.CLOSED and transport.closed
    assert connection in pool._idle  # still listed, and skipped when taken
    taken = [c for c in pool._idle if not c.closed]
    assert taken == []


@pytest.mark.parametrize(
    "answer_bytes",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
)
async def test_an_answer_that_is_not_http_fails_and_closes(answer_bytes: bytes) -> None:
    connection, transport, _ = connected()
    answer = sent(connection)
    connection.data_received(answer_bytes)
    with pytest.raises(UpstreamError, match="not valid HTTP"):
        await answer.wait_headers(1)
    assert link(connection) is Link.CLOSED and transport.closed


async def test_an_upstream_that_says_nothing_times_out() -> None:
    connection, _, _ = connected()
    answer = sent(connection)
    with pytest.raises(UpstreamTimeout):
        await answer.wait_headers(0.05)
    answer.release()
    assert link(connection) is Link.CLOSED


async def test_reading_pauses_while_the_body_waits_for_the_client() -> None:
    connection, transport, _ = connected()
    answer = sent(connection)
    big = b"x" * (1 << 20)
    connection.data_received(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * len(big)) + big
    )
    await answer.wait_headers(1)
    assert transport.paused
    await answer.next_chunk(1)
    assert not transport.paused


def test_the_table_keeps_one_request_at_a_time_and_closed_final() -> None:
    for each in Link:
        assert _LINK_TURNS[(each, LinkTurn.CLOSE)] is Link.CLOSED
    assert {turn for (state, turn) in _LINK_TURNS if state is Link.CLOSED} == {LinkTurn.CLOSE}
    assert [state for (state, turn) in _LINK_TURNS if turn is LinkTurn.SEND] == [Link.IDLE]
    assert [state for (state, turn) in _LINK_TURNS if turn is LinkTurn.RELEASE] == [Link.ANSWERED]
    asyncio.run(_refused())


async def _refused() -> None:
    connection, _, _ = connected()
    with pytest.raises(RuntimeError, match="release while idle"):
        connection._turn(LinkTurn.RELEASE)
