"""The composition root: the listeners are equals; the proxy runs without the admin app."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import pytest

from gateway.resources import Options
from gateway.runtime import Gateway
from tests.rawhttp import exchange, port_of
from tests.support import RecordingUpstream, make_config, raw_request, routes_dir, running_gateway

ROUTES = "upstream: core\nroutes:\n  - {methods: [GET], path: '/pub/{rest...}', public: true}\n"


async def test_the_proxy_serves_without_the_admin_listener(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        policies=routes_dir(tmp_path, ROUTES),
        decisions={"enabled": True, "listen": {"host": "127.0.0.1", "port": 0}},
    )
    options = Options(admin=False, access_log=io.BytesIO(), listener_check_interval=0.1)
    async with Gateway(config, options) as gateway, aiohttp.ClientSession() as http:
        assert gateway.admin_address is None
        assert gateway.proxy_address is not None and gateway.decisions_address is not None
        host, port = gateway.proxy_address
        async with http.get(f"http://{host}:{port}/pub/x") as response:
            assert response.status == 200
        host, port = gateway.decisions_address
        asked = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/pub/y"}
        async with http.get(f"http://{host}:{port}/decisions/forward-auth", headers=asked) as r:
            assert r.status == 200
    assert [r.raw_path for r in upstream.received] == ["/pub/x"]
    # Stopped: every listener is closed.
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"http://127.0.0.1:{port}/decisions/forward-auth") as r:
                raise AssertionError(f"still answering: {r.status}")
        except aiohttp.ClientConnectionError:
            pass


@pytest.mark.parametrize(
    ("request_bytes", "status", "admin_too"),
    [
        # The protocol rule is the request path's (aiohttp's admin server reads it as 1.x).
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 400, False),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, True),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, True),
    ],
)
async def test_parse_errors_are_http_1_1_problems_on_every_listener(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    request_bytes: bytes,
    status: int,
    admin_too: bool,
) -> None:
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        decisions={"enabled": True, "listen": {"host": "127.0.0.1", "port": 0}},
    )
    async with running_gateway(config) as gateway:
        host, port = gateway.decisions_address
        listeners = [gateway.proxy, f"http://{host}:{port}"] + [gateway.admin] * admin_too
        for url in listeners:
            replies, closed = await exchange(port_of(url), request_bytes)
            assert [r.status for r in replies] == [status], url
            assert replies[0].headers["content-type"] == "application/problem+json", url
            assert closed, url
            raw = await raw_request(port_of(url), request_bytes)
            assert raw.startswith(b"HTTP/1.1 %d " % status), (url, raw[:40])
