"""The composition root: the listeners are equals; the proxy runs without the admin app."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp

from gateway.runtime import Gateway, Options
from tests.support import RecordingUpstream, make_config, routes_dir

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
