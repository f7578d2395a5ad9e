"""Request bodies as real clients send them (§6.1): the empty chunked body, small bodies
buffered before the upstream is asked, and a trickle that would hold an upstream
connection — bytes on raw sockets, a real upstream, a real gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.rawhttp import exchange, port_of
from tests.support import RecordingUpstream, RunningGateway, gateway_with_routes, unique

ROUTES = (
    "upstream: core\nroutes:\n"
    "  - {methods: ['*'], path: '/pub/{rest...}', public: true}\n"
    "  - {methods: [POST, PUT], path: '/own/{rest...}', scopes: [me:read]}\n"
)
EMPTY_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    async with gateway_with_routes(tmp_path, database_url, upstream.url, ROUTES) as running:
        yield running


async def test_an_empty_chunked_body_is_forwarded_as_an_empty_body(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    """What `requests.post(url, data=iter([]))` and aiohttp with an empty generator send."""
    port = port_of(gateway.proxy)
    replies, _ = await exchange(port, b"POST /pub/x HTTP/1.1\r\nHost: x\r\n" + EMPTY_CHUNKED)
    assert [r.status for r in replies] == [200]
    replies, _ = await exchange(
        port,
        b"POST /pub/y HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n" + EMPTY_CHUNKED,
    )
    assert [r.status for r in replies] == [100, 200]
    for seen in upstream.received:
        assert seen.body == b"" and seen.headers["Content-Length"] == "0"
        assert "Transfer-Encoding" not in seen.headers


async def test_an_empty_generator_from_aiohttp_reaches_an_authenticated_route(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing

    key = (await gateway.create_key(unique("put"), ["me:read"]))["key"]
    for method in ("PUT", "POST"):
        async with http.request(
            method, gateway.proxy + "/own/thing", data=nothing(), headers={"X-API-Key": key}
        ) as r:
            assert r.status == 200, await r.text()
    assert [(r.method, r.body) for r in upstream.received] == [("PUT", b""), ("POST", b"")]


async def test_a_small_chunked_body_arrives_whole_with_its_length(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    replies, _ = await exchange(
        port_of(gateway.proxy),
        b"POST /pub/z HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert [r.status for r in replies] == [200]
    seen = upstream.received[-1]
    assert seen.body == b"hello world" and seen.headers["Content-Length"] == "11"


@dataclass
class CountingUpstream:
    """A TCP server that answers nothing and counts connections made and closed."""

    port: int = 0
    opened: int = 0
    closed: int = 0
    bytes_seen: list[int] = field(default_factory=list)


@asynccontextmanager
async def counting_upstream() -> AsyncIterator[CountingUpstream]:
    counter = CountingUpstream()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter.opened += 1
        seen = 0
        while data := await reader.read(65536):
            seen += len(data)
        counter.closed += 1
        counter.bytes_seen.append(seen)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    counter.port = server.sockets[0].getsockname()[1]
    try:
        yield counter
    finally:
        server.close()


async def _trickle(port: int, head: bytes, first: bytes, seconds: float) -> tuple[int, float]:
    """Send `head` and `first`, then a byte every second; the answer's status and when
    it came (0 if none within `seconds`)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + first)
    try:
        while time.monotonic() - started < seconds:
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except TimeoutError:
                writer.write(b"a")
                continue
            status = int(line.split()[1]) if line else 0
            return status, time.monotonic() - started
        return 0, 0.0
    finally:
        writer.close()


async def test_trickling_bodies_hold_no_upstream_connection_and_get_408(
    tmp_path: Path, database_url: str
) -> None:
    """50 clients declaring 100,000 bytes and sending one a second (well under the pause
    deadline) take no upstream connection, and are answered 408 once their average falls
    below the minimum rate (10 s after the head). A body past the buffer streams, and
    falling below the rate closes its upstream connection too."""
    async with counting_upstream() as counter:
        limits = {"min_body_bytes_per_second": 8000}
        async with gateway_with_routes(
            tmp_path, database_url, f"http://127.0.0.1:{counter.port}", ROUTES, limits=limits
        ) as gateway:
            port = port_of(gateway.proxy)
            head = b"POST /pub/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            tasks = [_trickle(port, head, b"", 14) for _ in range(50)]
            # 70,000 bytes at once: past the 64 KiB buffer, so it streams upstream.
            tasks.append(_trickle(port, head, b"s" * 70000, 14))
            watching = asyncio.gather(*tasks)
            await asyncio.sleep(5)
            held_at_5s = counter.opened - counter.closed
            results = await watching
            await asyncio.sleep(0.2)
    print(f"\n51 trickling bodies: {held_at_5s} upstream connection(s) held at 5 s; "
          f"answered {sorted({s for s, _ in results})} after {min(t for _, t in results):.1f}"
          f"-{max(t for _, t in results):.1f} s; {counter.opened} opened upstream")  # fmt: skip
    assert held_at_5s == 1  # the streamed one only
    assert all(status == 408 for status, _ in results), results
    assert all(9.5 <= at <= 12.5 for _, at in results), results
    assert counter.opened == 1 and counter.closed == 1
    assert counter.bytes_seen[0] < 100000  # never a whole request upstream
