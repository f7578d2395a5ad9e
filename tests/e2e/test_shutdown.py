"""Graceful stop (§18) of a real `gateway serve`: SIGTERM → /readyz 503 at once, still
serving for the drain, then no new connections, requests in flight finish, and the
usage counts and credit shares are written back before it exits 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import asyncpg

from tests.e2e.test_processes import _ready, _serve, _write_config, spawn  # noqa: F401
from tests.support import RecordingUpstream, admin_headers, bearer, unique


async def test_sigterm_drains_finishes_in_flight_and_writes_back(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    spawn: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "routes.yaml").write_text(
        "upstream: core\nroutes:\n"
        "  - {methods: [GET], path: /v1/me, scopes: [me:read]}\n"
        "  - {methods: [GET], path: '/delay/{seconds}', public: true}\n"
    )
    config, proxy, admin = _write_config(
        tmp_path, "drain", database_url, upstream.url,
        policies={"dir": str(policies)},
        shutdown={"drain_seconds": 1.5, "timeout_seconds": 10},
        usage={"flush_seconds": 3600},  # only the stop writes them
    )  # fmt: skip
    spawn.append(_serve(config, tmp_path))
    base = f"http://127.0.0.1:{proxy}"
    async with aiohttp.ClientSession() as http:
        await _ready(admin)
        body = {"user_id": unique("drain"), "name": "k", "scopes": ["me:read"],
                "credits": {"remaining": 500}}  # fmt: skip
        async with http.post(f"http://127.0.0.1:{admin}/admin/v1/keys", json=body,
                             headers=admin_headers()) as r:  # fmt: skip
            key = await r.json()
        auth = bearer(key["key"])
        for _ in range(5):
            async with http.get(base + "/v1/me", headers=auth) as r:
                assert r.status == 200
        # In flight across the whole stop: the upstream answers after 3 s.
        slow = asyncio.create_task(http.get(base + "/delay/3"))
        await asyncio.sleep(0.3)
        spawn[0].send_signal(signal.SIGTERM)
        told = time.monotonic()
        while True:  # (the signal takes a moment to arrive)
            async with http.get(f"http://127.0.0.1:{admin}/readyz") as r:
                if r.status == 503:
                    assert (await r.json())["status"] == "draining"
                    break
            assert time.monotonic() - told < 0.5, "/readyz did not turn 503"
            await asyncio.sleep(0.01)
        served = 0
        while time.monotonic() - told < 1.2:  # still serving during the drain
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(base + "/v1/me", headers=auth) as r,
            ):
                assert r.status == 200
                served += 1
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # past the drain: no new connections
        refused = False
        try:
            async with aiohttp.ClientSession() as fresh, fresh.get(base + "/v1/me", headers=auth):
                pass
        except aiohttp.ClientConnectionError:
            refused = True
        assert refused, "still accepting after the drain"
        response = await slow
        assert response.status == 200  # the request in flight finished
        response.release()
    assert spawn[0].wait(15) == 0
    conn = await asyncpg.connect(database_url)
    try:
        allowed = await conn.fetchval(
            "SELECT sum(allowed) FROM key_usage WHERE key_id = $1::uuid", key["id"]
        )
        left = await conn.fetchval(
            "SELECT credits_remaining FROM api_keys WHERE id = $1::uuid", key["id"]
        )
        shares = await conn.fetchval(
            "SELECT count(*) FROM credit_shares WHERE key_id = $1::uuid", key["id"]
        )
    finally:
        await conn.close()
    assert allowed == 5 + served  # counted to the last request, written on the way out
    assert shares == 0 and left == 500 - allowed  # what it held went back, exactly
