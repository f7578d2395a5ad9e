"""Regression tests, over raw sockets, for what an independent run against the proxy
port found when it had two HTTP stacks: each case as it was reported."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.rawhttp import exchange, port_of
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    gateway_with_routes,
    unique,
)

ROUTES = (
    "upstream: core\nroutes:\n"
    "  - {methods: ['*'], path: '/pub/{rest...}', public: true}\n"
    "  - {methods: [GET, POST], path: '/ws/{rest...}', scopes: [me:read]}\n"
)
BODY_SECONDS = 1.0


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    async with gateway_with_routes(
        tmp_path,
        database_url,
        upstream.url,
        ROUTES,
        limits={"body_timeout_seconds": BODY_SECONDS},
    ) as running:
        yield running


async def test_connect_in_origin_form_is_405_and_never_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    replies, closed = await exchange(
        port_of(gateway.proxy), b"CONNECT /pub/x HTTP/1.1\r\nHost: x\r\n\r\ntunnel?"
    )
    assert [r.status for r in replies] == [405]
    assert "allow" in replies[0].headers and "CONNECT" not in replies[0].headers["allow"]
    assert closed and upstream.received == []


async def test_a_stalled_small_body_is_408_and_reaches_nobody(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    started = time.monotonic()
    replies, closed = await exchange(
        port_of(gateway.proxy),
        b"POST /pub/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
        seconds=5,
    )
    elapsed = time.monotonic() - started
    assert [r.status for r in replies] == [408] and closed
    assert BODY_SECONDS * 0.9 <= elapsed < BODY_SECONDS + 1.5
    assert upstream.received == []


@asynccontextmanager
async def counting_upstream() -> AsyncIterator[list[int]]:
    """A TCP server that only counts the connections made to it."""
    accepted = [0]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        await reader.read()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    accepted.append(server.sockets[0].getsockname()[1])
    try:
        yield accepted
    finally:
        server.close()


async def test_a_slow_body_flood_takes_no_upstream_connection(
    tmp_path: Path, database_url: str
) -> None:
    async with counting_upstream() as counter:
        upstream_url = f"http://127.0.0.1:{counter[1]}"
        limits = {"body_timeout_seconds": BODY_SECONDS}
        async with gateway_with_routes(
            tmp_path, database_url, upstream_url, ROUTES, limits=limits
        ) as gateway:
            heads = [
                b"POST /pub/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n",
                b"POST /pub/hold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST /pub/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n"
                b"Expect: 100-continue\r\n\r\n",
            ] * 10
            results = await asyncio.gather(
                *(
                    exchange(port_of(gateway.proxy), head, seconds=BODY_SECONDS + 3)
                    for head in heads
                )
            )
    statuses = [[r.status for r in replies] for replies, _ in results]
    assert statuses.count([408]) == 20 and statuses.count([100, 408]) == 10, statuses
    assert all(closed for _, closed in results)
    assert counter[0] == 0  # a client that sends a head and stalls holds nothing upstream


async def test_a_body_stalled_mid_stream_is_408_and_the_upstream_connection_released(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    head = b"POST /pub/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    started = time.monotonic()
    replies, closed = await exchange(port_of(gateway.proxy), head + b"a" * 70000, seconds=5)
    assert [r.status for r in replies] == [408] and closed
    assert time.monotonic() - started < BODY_SECONDS + 1.5
    # The upstream connection carrying the body was closed, not left waiting: the
    # upstream never saw a whole request, and the next request is served at once.
    assert upstream.received == []
    replies, _ = await exchange(
        port_of(gateway.proxy), b"GET /pub/next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert [r.status for r in replies] == [200]


def _handshake(key: str, more: str = "") -> bytes:
    """A WebSocket handshake for /ws/chat, as raw bytes (RFC 6455's sample key)."""
    return (
        "GET /ws/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Authorization: Bearer {key}\r\n{more}\r\n"
    ).encode()


async def test_an_upgrade_carrying_a_body_is_refused(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
    handshake = _handshake(key, "Content-Length: 47\r\n")
    started = time.monotonic()
    replies, closed = await exchange(port_of(gateway.proxy), handshake + b"x" * 47, seconds=3)
    assert [r.status for r in replies] == [400] and closed
    assert time.monotonic() - started < 1.5
    assert upstream.received == []


async def test_a_request_behind_a_non_websocket_upgrade_is_answered(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    data = (
        b"GET /pub/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        b"GET /pub/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    replies, closed = await exchange(port_of(gateway.proxy), data)
    assert [r.status for r in replies] == [200, 200] and closed
    assert [r.raw_path for r in upstream.received] == ["/pub/a", "/pub/b"]
    assert "Upgrade" not in upstream.received[0].headers


async def test_a_broken_chunked_body_is_refused_at_once(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    data = (
        b"POST /pub/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    )
    started = time.monotonic()
    replies, closed = await exchange(port_of(gateway.proxy), data, seconds=3)
    assert [r.status for r in replies] == [400] and closed
    assert time.monotonic() - started < 0.5
    # The upstream may have seen the head and "hello", then its connection closing:
    # never a whole request.
    assert upstream.received == []


async def test_a_valid_request_then_a_malformed_one_in_one_read(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    data = b"GET /pub/ok HTTP/1.1\r\nHost: x\r\n\r\nGET /pub/bad HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"
    replies, closed = await exchange(port_of(gateway.proxy), data)
    assert [r.status for r in replies] == [200, 400] and closed
    assert [r.raw_path for r in upstream.received] == ["/pub/ok"]


async def test_a_client_leaving_mid_body_logs_no_error(
    gateway: RunningGateway, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
    for head in (
        b"POST /pub/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        b"POST /pub/x HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 70000,
        b"POST /ws/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {key}\r\n\r\n5\r\nhello\r\n".encode(),
    ):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.proxy))
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()
    await asyncio.sleep(0.3)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert upstream.received == []
    assert bearer(key)  # the key was only used on the wire


def _masked_text_frame(text: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + payload


async def test_a_frame_sent_with_the_handshake_is_relayed_after_the_101(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    """The bytes after the upgrade's head (a client that does not wait for the 101)
    reach the upstream as the first frame, and its answer comes back: raw bytes."""
    key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
    handshake = _handshake(key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.proxy))
    try:
        writer.write(handshake + _masked_text_frame(b"early"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head.lower()
        frame = await asyncio.wait_for(reader.readexactly(2 + len(b"echo:early")), 3)
        assert frame == bytes([0x81, len(b"echo:early")]) + b"echo:early"
    finally:
        writer.close()
