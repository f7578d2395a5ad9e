"""≥ 200 malformed and smuggling requests over raw sockets: 0 forwarded, 0 2xx.

Run against the gateway in this process (asyncio) and against a `gateway serve`
subprocess (uvloop; aiohttp without its C extensions). Every request on the proxy
port is read by the one reader (`http1.reader`: llhttp for heads, its own body
framing); aiohttp's parser only ever sees the head of an accepted WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from gateway.testing import environment, free_port, spawn_serve, stop, wait_ready
from tests.support import ADMIN_TOKEN, ROOT, RecordingUpstream, RunningGateway, raw_request, unique

FRAMINGS = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: identity, chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\tchunked\r\nX: 1\r\n ",
    b"Content-Length: -5\r\n",
    b"Content-Length: 0x5\r\n",
    b"Content-Length: 5 5\r\n",
    b"Content-Length: +5\r\n",
    b"X-Fold: a\r\n b\r\n",
    b"X-Bare-LF: a\nX-Other: b\r\n",
    b"X-Nul: a\x00b\r\n",
    b"X-CR: a\rb\r\n",
    b"Bad Header: 1\r\n",
    b": empty-name\r\n",
]
LINES = [
    b"GET /v1/public/x HTTP/2.0",
    b"GET /v1/public/x HTTP/1.2",
    b"GET /v1/public/x HTTP/0.9",
    b"get /v1/public/x HTTP/1.1",
    b"Get /v1/public/x HTTP/1.1",
    b"GET http://127.0.0.1/v1/public/x HTTP/1.1",
    b"GET //v1/public/x HTTP/1.1",
    b"GET * HTTP/1.1",
    b"GET v1/public/x HTTP/1.1",
    b"GET /v1/public/../../admin HTTP/1.1",
    b"GET /v1/public/%2e%2e/%2e%2e/admin HTTP/1.1",
    b"GET /v1/public/x%00 HTTP/1.1",
    b"GET /v1/public/x\x00 HTTP/1.1",
    b"GET /v1/public/x HTTP/1.1 extra",
    b"GET /v1/public/x HTTP/1.1\x00",
    b"GET /v1/public/x\tHTTP/1.1",
    b"G\x00T /v1/public/x HTTP/1.1",
    b"GET /v1/public/x#frag HTTP/1.1",
    b"GET /v1/public/\xff HTTP/1.1",
    b"GET /v1/public/%ff HTTP/1.1",
]
CHUNKED_BODIES = [
    b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n5;x=\x00\r\nhello\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\nz\r\nhello\r\n0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
]


def battery() -> list[bytes]:
    requests = []
    for framing, method in itertools.product(
        FRAMINGS, (b"POST", b"PUT", b"GET", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS")
    ):
        requests.append(method + b" /v1/public/x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nhello")
    for line, extra in itertools.product(
        LINES, (b"", b"X-API-Key: {key}\r\n", b"Content-Length: 0\r\n")
    ):
        requests.append(line + b"\r\nHost: x\r\n" + extra + b"\r\n")
    for body, method in itertools.product(CHUNKED_BODIES, (b"POST", b"PUT")):
        requests.append(method + b" /v1/public/x HTTP/1.1\r\nHost: x\r\n" + body)
    return requests


def test_the_battery_has_at_least_200_requests() -> None:
    assert len(battery()) >= 200


async def _fire(port: int, key: str) -> dict[str, int]:
    """The battery, 16 connections at a time (a request the server keeps open for more
    costs its 1 s timeout)."""
    figures = {"sent": 0, "2xx": 0}
    at_once = asyncio.Semaphore(16)

    async def send(request: bytes) -> None:
        async with at_once:
            answer = await raw_request(port, request.replace(b"{key}", key.encode()), timeout=1.0)
        figures["sent"] += 1
        status = answer.split(b" ", 2)[1:2]
        if status and status[0].startswith(b"2"):
            figures["2xx"] += 1

    await asyncio.gather(*(send(request) for request in battery()))
    return figures


async def test_no_malformed_request_is_forwarded_in_process(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
    port = urlsplit(gateway.proxy).port
    assert port is not None
    figures = await _fire(port, key)
    print(
        f"\nsmuggling battery (in process): {figures['sent']} sent, {figures['2xx']} 2xx, {len(upstream.received)} forwarded"
    )
    assert figures["2xx"] == 0
    assert upstream.received == []


async def test_no_malformed_request_is_forwarded_by_a_serve_process(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "g.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "listen": {"host": "127.0.0.1", "port": port},
                "admin": {"host": "127.0.0.1", "port": admin},
                "database": {"url": database_url},
                "policies": {"dir": str(ROOT / "policies")},
                "upstreams": {"core": {"url": upstream.url}},
                "shutdown": {"drain_seconds": 0},
            }
        )
    )
    env = environment(
        AIOHTTP_NO_EXTENSIONS="1", GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, GATEWAY_DATABASE_URL=None
    )
    process = spawn_serve(config, tmp_path / "log", env=env)
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{admin}", process, 20)
        async with aiohttp.ClientSession() as http:
            create = {"user_id": unique("u"), "name": "n", "scopes": ["me:read"]}
            async with http.post(
                f"http://127.0.0.1:{admin}/admin/v1/keys",
                json=create,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r:
                key = (await r.json())["key"]
        figures = await _fire(port, key)
    finally:
        stop(process, timeout=10)
    print(
        f"\nsmuggling battery (serve process): {figures['sent']} sent, {figures['2xx']} 2xx, {len(upstream.received)} forwarded"
    )
    assert figures["2xx"] == 0
    assert upstream.received == []
    assert "Traceback" not in (tmp_path / "log").read_text(errors="replace")


# llhttp reads a doubled space in the request line as one; the message boundaries
# and the path stay unambiguous, so it is tolerated, not smuggling.
@pytest.mark.parametrize(
    "line",
    [
        b"GET /v1/public/ok HTTP/1.1",
        b"GET /v1/public/ok HTTP/1.0",
        b"GET /v1/public/ok  HTTP/1.1",
        b"GET  /v1/public/ok HTTP/1.1",
    ],
)
async def test_a_well_formed_control_request_does_pass(
    gateway: RunningGateway, upstream: RecordingUpstream, line: bytes
) -> None:
    port = urlsplit(gateway.proxy).port
    assert port is not None
    answer = await raw_request(port, line + b"\r\nHost: x\r\n\r\n")
    if answer.split(b" ", 2)[1] == b"200":
        assert [r.raw_path for r in upstream.received] == ["/v1/public/ok"]
    else:
        assert upstream.received == []
