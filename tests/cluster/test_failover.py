"""PostgreSQL failover (§22) as real hosts: a primary with a synchronous streaming
standby (`pg_basebackup -R`), three gateways given both hosts in one URL with
`target_session_attrs=read-write`, an nginx balancer. The primary's host vanishes
under load (its processes killed, its address silent) and the standby is promoted a
second later, as a failover manager would do it. Every figure of §22's table for
PostgreSQL is measured, printed and held to its goal."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from tests.cluster.clients import FRONT, HEADERS, admin, load, new_key, status_of
from tests.cluster.test_cluster import FULL, LOAD_SECONDS
from tests.cluster.topology import GATEWAYS, STANDBY, Cluster, reason

GRANTED = 100_000
DETECTION_SECONDS = 1.0  # from the primary's loss to the promotion (a failover manager's wait)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = reason()
    if why is not None:
        pytest.skip(why)
    built = Cluster(
        tmp_path_factory.mktemp("failover"),
        {"usage": {"flush_seconds": 0.5}},
        standby=True,
    )
    try:
        built.up()
        yield built
    finally:
        built.down()


async def _until(what: str, within: float, check: object) -> float:
    """Seconds until `check()` (a coroutine function) is true; fails past `within`."""
    started = time.monotonic()
    while not await check():  # type: ignore[operator]
        assert time.monotonic() - started < within, f"{what}: not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _try_status(http: aiohttp.ClientSession, url: str, key: str) -> int:
    try:
        return await status_of(http, url, key)
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _served_after_promotion(http: aiohttp.ClientSession) -> float:
    """A key made through the new primary and served through the balancer: seconds."""
    started = time.monotonic()
    made: dict[str, str] = {}

    async def served() -> bool:
        if not made:
            try:
                made.update(await new_key(http))
            except (aiohttp.ClientError, AssertionError, TimeoutError):
                return False
        return await _try_status(http, f"{FRONT}/v1/me", made["key"]) == 200

    await _until("a new key served after the promotion", 5.0, served)
    return time.monotonic() - started


async def _revoked_everywhere(http: aiohttp.ClientSession, key: dict[str, str]) -> float:
    """Revoke through the new primary; seconds until all three hosts refuse the key."""

    async def revoked() -> bool:
        url = admin("g2") + f"/admin/v1/keys/{key['id']}"
        try:
            async with http.delete(url, headers=HEADERS) as r:
                return r.status in (200, 204)
        except (aiohttp.ClientError, TimeoutError):
            return False

    await _until("the revocation accepted", 5.0, revoked)
    started = time.monotonic()
    for address in GATEWAYS.values():
        url = f"http://{address}:8080/v1/me"

        async def refused(url: str = url) -> bool:
            return await _try_status(http, url, key["key"]) == 401

        await _until(f"the revoked key refused by {address}", 1.0, refused)
    return time.monotonic() - started


async def _on_the_new_primary(sql: str, key_id: str) -> int:
    conn = await asyncpg.connect(f"postgresql://postgres@{STANDBY}:5432/postgres", timeout=5)
    try:
        return int(await conn.fetchval(sql, key_id))
    finally:
        await conn.close()


async def _allowed(key_id: str) -> int:
    sql = "SELECT coalesce(sum(allowed), 0) FROM key_usage WHERE key_id = $1::uuid"
    return await _on_the_new_primary(sql, key_id)


async def _remaining(key_id: str) -> int:
    sql = "SELECT credits_remaining FROM api_keys WHERE id = $1::uuid"
    return await _on_the_new_primary(sql, key_id)


async def test_the_primary_vanishes_under_load_and_the_standby_is_promoted(net: Cluster) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        cached, doomed = await new_key(http), await new_key(http)
        paying = await new_key(http, credits={"remaining": GRANTED})
        for address in GATEWAYS.values():  # cached on every host
            for key in (cached, doomed, paying):
                assert await status_of(http, f"http://{address}:8080/v1/me", key["key"]) == 200
        warm = len(GATEWAYS)
        figures: dict[str, float] = {}

        async def failover() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(net.vanish, "pg")
            await asyncio.sleep(DETECTION_SECONDS)
            await asyncio.to_thread(net.promote)
            figures["served"] = await _served_after_promotion(http)
            figures["revoked"] = await _revoked_everywhere(http, doomed)

        seconds = max(LOAD_SECONDS, 3.0)
        seen, spent, _ = await asyncio.gather(
            load(f"{FRONT}/v1/me", cached["key"], seconds, connections=8, pause=0.005),
            load(f"{FRONT}/v1/me", paying["key"], seconds, connections=4, pause=0.01),
            failover(),
        )
        statuses = Counter(status for _, status in seen)
        served = statuses[200] + warm
        paid = Counter(status for _, status in spent)
        admitted = paid[200] + warm

        async def returned() -> bool:
            return await _remaining(paying["id"]) + admitted == GRANTED

        # Shares come back once idle (5 s here): then no credit may be missing.
        figures["credits"] = await _until("every credit not spent back in the key", 15, returned)

        async def counted() -> bool:
            return await _allowed(cached["id"]) == served

        try:
            figures["usage"] = await _until("usage totals equal to requests served", 10, counted)
        finally:
            figures["total"] = await _allowed(cached["id"])
    print(
        f"\nPostgreSQL failover (primary's host gone, standby promoted {DETECTION_SECONDS:g} s"
        f" later) under load on a cached key{' (full)' if FULL else ''}: {dict(statuses)};"
        f" a new key served {figures['served']:.2f} s after the promotion;"
        f" a key revoked then refused by all three hosts after {figures['revoked'] * 1000:.0f} ms;"
        f" usage {figures['total']:.0f} counted for {served} served;"
        f" a key with {GRANTED} credits under load meanwhile: {dict(paid)}, all"
        f" {GRANTED - admitted} unspent back in the key {figures['credits']:.1f} s after"
    )
    assert set(statuses) == {200}
    assert set(paid) <= {200, 503}  # 503: a share that needed more had no primary to ask
    assert figures["served"] <= 5.0


async def test_a_fenced_primary_is_left_and_writes_answer_503(net: Cluster) -> None:
    """The (new) primary turned read-only under open connections, as a failover manager
    fences a primary it is about to demote: admin writes answer 503, not 500; lifted,
    they are served again."""
    primary = f"postgresql://postgres@{STANDBY}:5432/postgres"
    conn = await asyncpg.connect(primary, timeout=5)
    try:
        await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await conn.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            body = {"user_id": "fenced", "name": "k", "scopes": ["me:read"]}
            async with http.post(admin("g1") + "/admin/v1/keys", json=body, headers=HEADERS) as r:
                assert r.status == 503, await r.text()
                assert (await r.json())["type"].endswith("database-unavailable")
            await _unfence(conn)

            async def writable() -> bool:
                async with http.post(
                    admin("g1") + "/admin/v1/keys", json=body, headers=HEADERS
                ) as r:
                    return r.status == 201

            # A write in the gap waits out the vanished first host (5 s) before it answers.
            took = await _until("writes served again after the fence is lifted", 12.0, writable)
        print(f"\na fenced primary: admin writes 503; served again {took:.2f} s after lifting it")
    finally:
        await _unfence(conn)
        await conn.close()


async def _unfence(conn: asyncpg.Connection) -> None:
    await conn.execute("SET default_transaction_read_only = off")  # this session's own
    await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
    await conn.execute("SELECT pg_reload_conf()")
