"""The lean upstream client through a real gateway, against scripted raw upstreams on
loopback: framing, response splitting, keep-alive reuse, the one safe retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from gateway.forward.client import MAX_IDLE, Origin, Pool
from tests.support import RunningGateway, make_config, raw_request, routes_dir, running_gateway

Script = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
ROUTES = "upstream: core\nroutes:\n  - {methods: ['*'], path: '/{rest...}', public: true}\n"


class RawUpstream:
    """A TCP server that answers with whatever bytes a test scripts; counts what it saw."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            await self.script(self, reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body


@asynccontextmanager
async def raw_upstream(script: Script) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(script)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def gateway_to(
    tmp_path: Path, database_url: str, upstream: RawUpstream
) -> AsyncIterator[RunningGateway]:
    config = make_config(tmp_path, database_url, upstream.url, routes_dir(tmp_path, ROUTES))
    async with running_gateway(config) as running:
        yield running


def keep_alive(body: bytes = b"ok", extra: bytes = b"") -> Script:
    async def script(
        upstream: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)
            )
            await writer.drain()

    return script


@asynccontextmanager
async def scripted(
    tmp_path: Path, database_url: str, script: Script
) -> AsyncIterator[tuple[RawUpstream, RunningGateway]]:
    async with raw_upstream(script) as upstream:
        async with gateway_to(tmp_path, database_url, upstream) as gateway:
            yield upstream, gateway


async def test_connections_are_kept_alive_and_reused(
    tmp_path: Path, database_url: str, http: aiohttp.ClientSession
) -> None:
    async with scripted(tmp_path, database_url, keep_alive()) as (upstream, gateway):
        for _ in range(20):
            async with http.get(gateway.proxy + "/x") as r:
                assert (r.status, await r.read()) == (200, b"ok")
        assert upstream.connections == 1 and len(upstream.requests) == 20
        statuses = await asyncio.gather(*(_status(http, gateway.proxy + "/y") for _ in range(300)))
        assert set(statuses) == {200}
    assert upstream.connections <= 301


async def test_an_upstreams_date_is_relayed_and_one_is_added_when_it_has_none(
    tmp_path: Path, database_url: str
) -> None:
    upstream_date = b"daTE: Tue, 01 Dec 2026 10:00:00 GMT\r\n"  # any spelling of the name
    relaying = keep_alive(extra=upstream_date)
    for name in ("relayed", "added"):
        (tmp_path / name).mkdir()
    async with scripted(tmp_path / "relayed", database_url, relaying) as (_, gateway):
        relayed = await raw_request(_port(gateway), b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    async with scripted(tmp_path / "added", database_url, keep_alive()) as (_, gateway):
        added = await raw_request(_port(gateway), b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    relayed_head = relayed.partition(b"\r\n\r\n")[0].lower()
    assert relayed_head.count(b"\r\ndate:") == 1
    assert b"\r\ndate: tue, 01 dec 2026 10:00:00 gmt" in relayed_head
    added_dates = [
        line
        for line in added.partition(b"\r\n\r\n")[0].split(b"\r\n")
        if line.startswith(b"Date: ")
    ]
    assert len(added_dates) == 1 and added_dates[0].endswith(b" GMT")


def _port(gateway: RunningGateway) -> int:
    return int(gateway.proxy.rsplit(":", 1)[1])


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Split : yes\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ],
)
async def test_a_response_splitting_upstream_is_a_502(
    tmp_path: Path, database_url: str, http: aiohttp.ClientSession, answer: bytes
) -> None:
    async def script(
        upstream: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.5)

    async with scripted(tmp_path, database_url, script) as (_, gateway):
        async with http.get(gateway.proxy + "/x") as r:
            assert r.status == 502
            assert r.content_type == "application/problem+json"


async def test_chunked_interim_and_bodiless_answers(
    tmp_path: Path, database_url: str, http: aiohttp.ClientSession
) -> None:
    answers = {
        b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"/hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal",
        b"/empty": b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n",
        b"/same": b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n',
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        b"/until-close": b"HTTP/1.0 200 OK\r\n\r\nall of it",
    }

    async def script(
        upstream: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            writer.write(answers[path])
            await writer.drain()
            if path == b"/until-close":
                return

    async with scripted(tmp_path, database_url, script) as (_, gateway):
        base = gateway.proxy
        async with http.get(base + "/chunked") as r:
            assert (r.status, await r.read()) == (200, b"hello world")
        async with http.get(base + "/hints") as r:
            assert (r.status, await r.read()) == (200, b"real")
        async with http.get(base + "/empty") as r:
            assert (r.status, r.headers["X-Up"], await r.read()) == (204, "1", b"")
        async with http.get(base + "/same") as r:
            assert r.status == 304
        async with http.head(base + "/head") as r:
            assert (r.status, r.headers["Content-Length"]) == (200, "1234")
        async with http.get(base + "/until-close") as r:
            assert (r.status, await r.read()) == (200, b"all of it")


async def test_a_reused_connection_closed_before_answering_is_retried_when_safe(
    tmp_path: Path, database_url: str, http: aiohttp.ClientSession
) -> None:
    async def script(
        upstream: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if n == 1:
            # Keep-alive promised, then the second request on it dies unanswered.
            await upstream.read_request(reader)
            return
        while True:
            await upstream.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with scripted(tmp_path, database_url, script) as (upstream, gateway):
        async with http.get(gateway.proxy + "/first") as r:
            assert r.status == 200
        async with http.get(gateway.proxy + "/again") as r:
            assert r.status == 200  # retried on a fresh connection
        assert [req.split(b" ")[1] for req in upstream.requests] == [
            b"/first",
            b"/again",
            b"/again",
        ]

    (tmp_path / "post").mkdir()
    async with scripted(tmp_path / "post", database_url, script) as (upstream, gateway):
        async with http.post(gateway.proxy + "/first", data=b"one") as r:
            assert r.status == 200
        async with http.post(gateway.proxy + "/again", data=b"two") as r:
            assert r.status == 502  # a POST with a body is never sent twice
        assert [req.split(b" ")[1] for req in upstream.requests] == [b"/first", b"/again"]


async def test_idle_connections_are_closed_and_bounded() -> None:
    closed = asyncio.Event()

    async def script(
        upstream: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client closes
        closed.set()

    async with raw_upstream(script) as upstream:
        pool = Pool(Origin.of(upstream.url), 5.0, idle_seconds=0.2)
        answers = await asyncio.gather(
            *(pool.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", method=b"GET", header_timeout=2)
              for _ in range(MAX_IDLE + 20))
        )  # fmt: skip
        for answer in answers:
            assert await answer.read_all(1) == b""
            answer.release()
        assert len(pool._idle) == MAX_IDLE  # the rest were closed at once
        await asyncio.wait_for(closed.wait(), 2)  # and the pooled ones after the idle time
        await asyncio.sleep(0.3)
        assert all(connection.closed for connection in pool._idle)
        pool.close()


def test_the_pool_runs_on_uvloop() -> None:
    """`serve` runs on uvloop when installed: its transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[list[bytes], int]:
        async def script(
            upstream: RawUpstream,
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            _n: int,
        ) -> None:
            while True:
                await upstream.read_request(reader)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                )
                await writer.drain()

        async with raw_upstream(script) as upstream:
            pool = Pool(Origin.of(upstream.url), 2.0)
            bodies = []
            for _ in range(3):
                answer = await pool.send(
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", method=b"GET", header_timeout=2
                )
                bodies.append(await answer.read_all(2))
                answer.release()
            pool.close()
            await asyncio.sleep(0.1)  # the closes reach the server's handlers
            return bodies, upstream.connections

    loop = uvloop.new_event_loop()
    try:
        bodies, connections = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert bodies == [b"ok"] * 3 and connections == 1
