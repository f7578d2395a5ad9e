"""Credits across real `gateway serve` processes (§16): spent as fast as two processes
can admit, never more than granted and almost all of it usable; a share held by a
process killed with SIGKILL goes back to the key."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.testing import stop
from tests.e2e.test_processes import _ready, _serve, _write_config, spawn  # noqa: F401
from tests.support import RecordingUpstream, admin_headers, bearer, unique

# Short leases so a dead holder's share comes back within the test (the default is 30 s).
FAST = {"credits": {"lease_seconds": 3, "sync_interval_seconds": 0.5}}


async def _key_with(http: aiohttp.ClientSession, admin_port: int, credits: int) -> dict[str, str]:
    body = {"user_id": unique("race"), "name": "race", "scopes": ["me:read"],
            "credits": {"remaining": credits}}  # fmt: skip
    async with http.post(
        f"http://127.0.0.1:{admin_port}/admin/v1/keys", json=body, headers=admin_headers()
    ) as response:
        assert response.status == 201
        return dict(await response.json())


async def _hammer(url: str, key: str, connections: int, quiet_seconds: float = 1.0) -> int:
    """Spend through one process from `connections` clients until it has refused every
    request for `quiet_seconds` (or 60 s pass); how many were admitted."""
    admitted = 0
    last_admitted = time.monotonic()
    deadline = time.monotonic() + 60
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal admitted, last_admitted
            while time.monotonic() - last_admitted < quiet_seconds and time.monotonic() < deadline:
                async with http.get(url, headers=bearer(key)) as response:
                    await response.read()
                    if response.status == 200:
                        admitted += 1
                        last_admitted = time.monotonic()
                    else:
                        assert response.status == 429, response.status
                        await asyncio.sleep(0.01)

        await asyncio.gather(*(client() for _ in range(connections)))
    return admitted


@pytest.mark.parametrize(("credits", "connections"), [(1000, 16), (10_000, 64)])
async def test_two_processes_never_overspend_and_use_almost_all(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    spawn: list[subprocess.Popen[bytes]],  # noqa: F811
    credits: int,
    connections: int,
) -> None:
    one, p1, a1 = _write_config(tmp_path, "one", database_url, upstream.url, **FAST)
    two, p2, a2 = _write_config(tmp_path, "two", database_url, upstream.url, **FAST)
    spawn += [_serve(one, tmp_path), _serve(two, tmp_path)]
    async with aiohttp.ClientSession() as http:
        await _ready(a1)
        await _ready(a2)
        key = await _key_with(http, a1, credits)
    started = time.monotonic()
    admitted = await asyncio.gather(
        *(_hammer(f"http://127.0.0.1:{port}/v1/me", key["key"], connections) for port in (p1, p2))
    )
    took = time.monotonic() - started
    stop(*spawn)  # each gives back what it holds
    assert [process.returncode for process in spawn] == [0, 0]
    conn = await asyncpg.connect(database_url)
    try:
        left = await conn.fetchval(
            "SELECT credits_remaining FROM api_keys WHERE id = $1::uuid", key["id"]
        )
        held = await conn.fetchval(
            "SELECT count(*) FROM credit_shares WHERE key_id = $1::uuid", key["id"]
        )
    finally:
        await conn.close()
    total = sum(admitted)
    print(f"\n{credits} credits, 2 processes x {connections} connections: admitted {admitted}"
          f" = {total} ({total / credits:.1%}) in {took:.1f} s; {left} given back")  # fmt: skip
    assert total <= credits
    assert total >= credits * 0.99
    assert held == 0 and total + left == credits  # exact: the shares came back


async def test_a_share_held_by_a_killed_process_goes_back_to_the_key(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    spawn: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    one, p1, a1 = _write_config(tmp_path, "one", database_url, upstream.url, **FAST)
    two, _, a2 = _write_config(tmp_path, "two", database_url, upstream.url, **FAST)
    spawn += [_serve(one, tmp_path), _serve(two, tmp_path)]
    async with aiohttp.ClientSession() as http:
        await _ready(a1)
        await _ready(a2)
        key = await _key_with(http, a1, 800)
        for _ in range(3):
            async with http.get(f"http://127.0.0.1:{p1}/v1/me", headers=bearer(key["key"])) as r:
                assert r.status == 200
    conn = await asyncpg.connect(database_url)
    try:
        share = await conn.fetchrow(
            "SELECT amount, claimed FROM credit_shares WHERE key_id = $1::uuid", key["id"]
        )
        assert share is not None and share["amount"] == 100  # an eighth of 800
        spawn[0].send_signal(signal.SIGKILL)
        spawn[0].wait(5)
        killed = time.monotonic()
        while await conn.fetchval(
            "SELECT count(*) FROM credit_shares WHERE key_id = $1::uuid", key["id"]
        ):
            assert time.monotonic() - killed < 10, "the share did not come back"
            await asyncio.sleep(0.1)
        back = time.monotonic() - killed
        left = await conn.fetchval(
            "SELECT credits_remaining FROM api_keys WHERE id = $1::uuid", key["id"]
        )
    finally:
        await conn.close()
    print(f"\nthe killed process's share came back after {back:.1f} s (lease 3 s)")
    # What it never claimed comes back; what it claimed is counted as spent.
    assert left == 800 - share["claimed"] and share["claimed"] >= 3


async def test_two_processes_spending_one_users_pool_through_two_keys_never_overspend(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    spawn: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    """§21: a user's pool, spent by each of their keys in a process of its own, with the
    guarantees of a key's balance: never more than granted, almost all usable, exact."""
    one, p1, a1 = _write_config(tmp_path, "one", database_url, upstream.url, **FAST)
    two, p2, a2 = _write_config(tmp_path, "two", database_url, upstream.url, **FAST)
    spawn += [_serve(one, tmp_path), _serve(two, tmp_path)]
    user, credits = unique("pool"), 3000
    async with aiohttp.ClientSession() as http:
        await _ready(a1)
        await _ready(a2)
        keys = []
        for _ in range(2):
            body = {"user_id": user, "name": "pooled", "scopes": ["me:read"]}
            async with http.post(
                f"http://127.0.0.1:{a1}/admin/v1/keys", json=body, headers=admin_headers()
            ) as response:
                assert response.status == 201
                keys.append(dict(await response.json()))
        async with http.put(
            f"http://127.0.0.1:{a2}/admin/v1/users/{user}/credits",
            json={"remaining": credits},
            headers=admin_headers(),
        ) as response:
            assert response.status == 200
    admitted = await asyncio.gather(
        *(
            _hammer(f"http://127.0.0.1:{port}/v1/me", key["key"], 32)
            for port, key in zip((p1, p2), keys, strict=True)
        )
    )
    stop(*spawn)
    assert [process.returncode for process in spawn] == [0, 0]
    conn = await asyncpg.connect(database_url)
    try:
        pool = await conn.fetchrow(
            "SELECT id, credits_remaining FROM user_credits WHERE user_id = $1", user
        )
        assert pool is not None
        held = await conn.fetchval(
            "SELECT count(*) FROM user_credit_shares WHERE pool_id = $1", pool["id"]
        )
    finally:
        await conn.close()
    total = sum(admitted)
    print(f"\na pool of {credits}, 2 processes x 2 keys: admitted {admitted} = {total}"
          f" ({total / credits:.1%}); {pool['credits_remaining']} given back")  # fmt: skip
    assert total <= credits and total >= credits * 0.99
    assert held == 0 and total + pool["credits_remaining"] == credits
