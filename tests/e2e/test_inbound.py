"""The gateway's own HTTP/1.1 server (`edge.inbound`) over raw sockets: pipelining, the
gateway's own endpoints on the same path, body framing both ways, and where a
connection ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.rawhttp import Reply, exchange
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    make_config,
    routes_dir,
    running_gateway,
    unique,
)

ROUTES = (
    "upstream: core\nroutes:\n"
    "  - {methods: [GET, HEAD], path: '/open/{rest...}', public: true}\n"
    "  - {methods: [GET, HEAD], path: '/big/{size}', public: true}\n"
    "  - {methods: [GET, HEAD], path: '/chunked/{size}', public: true}\n"
    "  - {methods: [GET], path: '/delay/{seconds}', public: true}\n"
    "  - {methods: [POST], path: '/echo-body/{rest...}', scopes: [me:read]}\n"
)
PATTERN = bytes(range(256))


def _port(gateway: RunningGateway) -> int:
    port = urlsplit(gateway.proxy).port
    assert port is not None
    return port


def _get(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: x", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _forwarded_path(reply: Reply) -> str:
    return str(json.loads(reply.body)["path"])


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    config = make_config(
        tmp_path, database_url, upstream.url, policies=routes_dir(tmp_path, ROUTES)
    )
    async with running_gateway(config) as running:
        yield running


async def _key(gateway: RunningGateway) -> str:
    return str((await gateway.create_key(unique("user"), ["me:read"]))["key"])


async def test_pipelined_requests_are_answered_in_order(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    data = _get("/open/1") + _get("/open/2") + _get("/open/3", "Connection: close")
    replies, closed = await exchange(_port(gateway), data)
    assert [r.status for r in replies] == [200, 200, 200]
    assert [_forwarded_path(r) for r in replies] == ["/open/1", "/open/2", "/open/3"]
    assert [r.raw_path for r in upstream.received] == ["/open/1", "/open/2", "/open/3"]
    assert replies[2].headers["connection"] == "close" and closed


async def test_empty_lines_before_a_request_line_are_skipped(gateway: RunningGateway) -> None:
    replies, _ = await exchange(_port(gateway), b"\r\n\r\n" + _get("/open/x", "Connection: close"))
    assert [r.status for r in replies] == [200]


async def test_an_owned_path_is_answered_on_the_same_path_and_forwarding_goes_on(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    spoof = "X-Gateway-User-Id: spoofed"
    data = (
        _get("/open/before")
        + _get("/.well-known/jwks.json")
        + _get("/open/after", spoof, "Authorization: Bearer whatever", "Connection: close")
    )
    replies, closed = await exchange(_port(gateway), data)
    assert [r.status for r in replies] == [200, 200, 200]
    assert _forwarded_path(replies[0]) == "/open/before"
    assert "keys" in json.loads(replies[1].body)
    assert _forwarded_path(replies[2]) == "/open/after"
    assert [r.raw_path for r in upstream.received] == ["/open/before", "/open/after"]
    after = upstream.received[1].headers
    assert "X-Gateway-User-Id" not in after and "Authorization" not in after
    assert closed


async def test_a_request_right_behind_a_chunked_body_is_served_after_it(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await _key(gateway)
    post = (
        "POST /echo-body/x HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
    ).encode()
    # The reader frames chunked bodies itself, so it knows where this one ends.
    replies, closed = await exchange(
        _port(gateway), post + _get("/open/behind", "Connection: close")
    )
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].body == b"hello" and "connection" not in replies[0].headers
    assert _forwarded_path(replies[1]) == "/open/behind" and closed
    assert [r.raw_path for r in upstream.received] == ["/echo-body/x", "/open/behind"]
    # The trailer was read and dropped: never a header field upstream.
    assert "X-Trailer" not in upstream.received[0].headers


async def test_a_body_is_never_taken_for_a_request(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    inner = _get("/open/smuggled")
    post = f"POST /echo-body/x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(inner)}\r\n\r\n"
    data = post.encode() + inner + _get("/open/after", "Connection: close")
    replies, _ = await exchange(_port(gateway), data)
    assert [r.status for r in replies] == [401, 200]  # the body was read whole, as a body
    assert [r.raw_path for r in upstream.received] == ["/open/after"]


async def test_a_body_not_read_to_its_end_closes_the_connection(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    post = b"POST /echo-body/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc"
    replies, closed = await exchange(_port(gateway), post + _get("/open/after"))
    assert [r.status for r in replies] == [401]
    assert replies[0].headers["connection"] == "close" and closed
    assert upstream.received == []


async def test_a_body_read_whole_keeps_the_connection(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await _key(gateway)
    body = b"x" * 100_000  # streamed upstream, not sent with the head
    post = (
        f"POST /echo-body/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    replies, _ = await exchange(
        _port(gateway), post + body + _get("/open/next", "Connection: close")
    )
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].body == body
    assert [r.raw_path for r in upstream.received] == ["/echo-body/x", "/open/next"]


async def test_http_1_0_closes_unless_kept_alive(gateway: RunningGateway) -> None:
    replies, closed = await exchange(_port(gateway), _get("/open/a", version="1.0"))
    assert [r.status for r in replies] == [200]
    assert replies[0].headers["connection"] == "close" and closed
    keep = _get("/open/b", "Connection: keep-alive", version="1.0")
    replies, closed = await exchange(_port(gateway), keep + keep, seconds=1.0)
    assert [r.status for r in replies] == [200, 200]
    assert all(r.headers["connection"] == "keep-alive" for r in replies) and not closed


@pytest.mark.parametrize("size", [10, 200_000])
async def test_a_body_without_length_is_chunked_or_ends_with_the_connection(
    gateway: RunningGateway, size: int
) -> None:
    expected = (PATTERN * (size // 256 + 1))[:size]
    replies, _ = await exchange(_port(gateway), _get(f"/chunked/{size}", "Connection: close"))
    assert replies[0].headers.get("transfer-encoding") == "chunked"
    assert replies[0].body == expected
    replies, closed = await exchange(_port(gateway), _get(f"/chunked/{size}", version="1.0"))
    assert "transfer-encoding" not in replies[0].headers
    assert replies[0].body == expected and closed


async def test_head_answers_carry_the_length_and_no_body(gateway: RunningGateway) -> None:
    heads = [b"HEAD /big/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size for size in (200_000, 10)]
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
    writer.write(b"".join(heads))
    received = b""
    while received.count(b"\r\n\r\n") < 2:
        received += await asyncio.wait_for(reader.read(65536), 3)
    await asyncio.sleep(0.2)  # a body, if one followed, would arrive now
    writer.close()
    first, second, rest = received.split(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 200000" in first
    assert second.startswith(b"HTTP/1.1 200") and b"Content-Length: 10" in second
    assert rest == b""


async def test_a_head_that_never_ends_is_431_at_the_limit(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    endless = b"GET /open/x HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 40_000
    replies, closed = await exchange(_port(gateway), endless, seconds=1.0)
    assert [r.status for r in replies] == [431] and closed
    assert json.loads(replies[0].body)["type"].endswith("headers-too-large")
    assert upstream.received == []


async def test_a_request_in_flight_finishes_when_the_gateway_stops(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    config = make_config(
        tmp_path, database_url, upstream.url, policies=routes_dir(tmp_path, ROUTES)
    )
    async with aiohttp.ClientSession() as http:
        async with running_gateway(config) as gateway:
            pending = asyncio.create_task(http.get(gateway.proxy + "/delay/0.5"))
            await asyncio.sleep(0.2)
        response = await pending
        assert response.status == 200
        response.release()


async def test_an_echoed_origin_goes_back_as_the_bytes_it_came_as(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    policies = routes_dir(tmp_path, ROUTES)
    config = make_config(
        tmp_path, database_url, upstream.url, policies=policies, cors={"allow_origins": ["*"]}
    )
    async with running_gateway(config) as gateway:
        request = b"GET /open/x HTTP/1.1\r\nHost: x\r\nOrigin: http://\xff.example\r\n"
        for path in (b"/open/x", b"/nowhere"):  # forwarded, and refused (404)
            data = request.replace(b"/open/x", path) + b"Connection: close\r\n\r\n"
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
            writer.write(data)
            answer = await asyncio.wait_for(reader.read(), 3)
            writer.close()
            assert b"\r\nAccess-Control-Allow-Origin: http://\xff.example\r\n" in answer
