"""The WebSocket relay (`edge.upgrade.Pipe`), driven by byte scripts with no socket:
the upstream's answer to the handshake is read, then bytes pass both ways unparsed,
with flow control, the end of either side ending both, and the idle cut."""

from __future__ import annotations

import asyncio

import pytest

from gateway.edge.upgrade import Pipe
from tests.transports import Recorded

SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
CLOSE_4003 = b"\x88\x02\x0f\xa3"  # a close frame with code 4003, as the upstream sent it


def piped(idle_seconds: float = 60.0) -> tuple[Pipe, Recorded, Recorded]:
    pipe = Pipe(idle_seconds)
    client, upstream = Recorded(), Recorded()
    pipe.client.connection_made(client)
    pipe.upstream.connection_made(upstream)
    return pipe, client, upstream


async def test_the_101_is_read_and_the_frames_behind_it_kept_for_the_client() -> None:
    pipe, client, _ = piped()
    pipe.upstream.data_received(SWITCHED + b"\x81\x02hi")
    await pipe.upstream.head_done
    assert pipe.upstream.answer.status == 101 and pipe.upstream.rest == b"\x81\x02hi"
    assert client.written == b""  # the door writes the head and the rest, in that order


async def test_after_the_head_bytes_pass_both_ways_as_sent() -> None:
    pipe, client, upstream = piped()
    pipe.upstream.data_received(SWITCHED)
    await pipe.upstream.head_done
    big = b"\x82\x7f" + (6 << 20).to_bytes(8, "big") + b"x" * 100  # a 6 MiB frame begins
    pipe.client.data_received(big)
    pipe.upstream.data_received(CLOSE_4003)
    assert upstream.written == big and client.written == CLOSE_4003


async def test_a_side_that_cannot_write_pauses_the_other_sides_reading() -> None:
    pipe, client, upstream = piped()
    pipe.upstream.pause_writing()
    assert client.paused and not upstream.paused
    pipe.upstream.resume_writing()
    assert not client.paused
    pipe.client.pause_writing()
    assert upstream.paused


async def test_an_end_or_a_close_on_one_side_closes_the_other() -> None:
    pipe, client, upstream = piped()
    pipe.upstream.data_received(SWITCHED)
    pipe.upstream.data_received(CLOSE_4003)
    # The client's end: the upstream is closed after what it has buffered is written,
    # and the client's own transport is closed by asyncio (False).
    assert pipe.client.eof_received() is False
    assert upstream.closed and not upstream.aborted and not upstream.eof
    pipe.client.connection_lost(None)
    pipe.upstream.connection_lost(None)
    assert client.closed and not client.aborted and client.written == CLOSE_4003
    await asyncio.wait_for(pipe.ended(), 1)
    other, client, upstream = piped()
    other.upstream.data_received(SWITCHED)
    other.upstream.connection_lost(None)  # the upstream closed: so is the client
    assert client.closed and not client.aborted


async def test_neither_side_sending_for_the_idle_time_cuts_both() -> None:
    pipe, client, upstream = piped(idle_seconds=0.05)
    pipe.client.data_received(b"\x81\x00")
    await asyncio.sleep(0.02)
    assert not client.aborted
    await asyncio.sleep(0.15)
    assert client.aborted and upstream.aborted


async def test_an_upstream_refusing_the_upgrade_is_read_whole() -> None:
    pipe, _, _ = piped()
    pipe.upstream.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno")
    assert not pipe.upstream.head_done.done()
    pipe.upstream.data_received(b"pe!!")
    await pipe.upstream.head_done
    assert pipe.upstream.answer.status == 403 and b"".join(pipe.upstream.answer.body) == b"nope!!"


async def test_a_refusal_delimited_by_the_close_is_read_whole() -> None:
    pipe, _, _ = piped()
    pipe.upstream.data_received(b"HTTP/1.1 403 Forbidden\r\n\r\nuntil the end")
    pipe.upstream.connection_lost(None)
    await pipe.upstream.head_done
    assert b"".join(pipe.upstream.answer.body) == b"until the end"


@pytest.mark.parametrize(
    ("script", "message"),
    [(b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"), (b"HTTP/1.1 101 Switch", "closed")],
)
async def test_an_answer_that_is_not_one_fails_the_handshake(script: bytes, message: str) -> None:
    pipe, _, _ = piped()
    pipe.upstream.data_received(script)
    pipe.upstream.connection_lost(None)
    with pytest.raises(ConnectionError, match=message):
        await pipe.upstream.head_done
