"""Database cut under load, upstream faults, and a flood of random well-formed keys."""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from gateway.keys import format as key_format
from tests.e2e.test_database_outage import tcp_database
from tests.hardening.scale import pick
from tests.support import RecordingUpstream, bearer, make_config, running_gateway, unique
from tests.tcpproxy import TcpProxy

__all__ = ["tcp_database"]
DB_TIMEOUT = 1.0


async def _client(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    stop: asyncio.Event,
    log: list[tuple[int, float, bool]],
) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        async with http.get(url, headers=bearer(token)) as response:
            await response.read()
            log.append(
                (response.status, time.perf_counter() - started, "Retry-After" in response.headers)
            )


async def test_database_cut_under_load(
    tmp_path: Path, tcp_database: tuple[TcpProxy, str], upstream: RecordingUpstream
) -> None:
    proxy, url = tcp_database
    config = make_config(
        tmp_path,
        url,
        upstream.url,
        database={"command_timeout_seconds": DB_TIMEOUT, "connect_timeout_seconds": DB_TIMEOUT},
    )
    cut_seconds = pick(5, 30)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        cached = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        target = gateway.proxy + "/v1/me"
        async with http.get(target, headers=bearer(cached)) as response:
            assert response.status == 200
        await proxy.cut()
        stop = asyncio.Event()
        logs: dict[str, list[tuple[int, float, bool]]] = {"cached": [], "unknown": [], "bad": []}
        queries = gateway.store.queries
        bad = "gwk_" + "B" * 38
        tasks = [
            asyncio.create_task(_client(http, target, cached, stop, logs["cached"])),
            asyncio.create_task(
                _client(http, target, key_format.generate("gwk"), stop, logs["unknown"])
            ),
            asyncio.create_task(_client(http, target, bad, stop, logs["bad"])),
        ]
        await asyncio.sleep(cut_seconds)
        stop.set()
        await asyncio.gather(*tasks)
        restored = time.monotonic()
        await proxy.restore()
        probe = key_format.generate("gwk")
        while True:
            async with http.get(target, headers=bearer(probe)) as response:
                if response.status == 401:
                    break
            assert time.monotonic() - restored < 5
            await asyncio.sleep(0.05)
        recovery = time.monotonic() - restored
    cached_ok = sum(s == 200 for s, _, _ in logs["cached"]) / len(logs["cached"])
    unknown_503 = sum(s == 503 and r for s, _, r in logs["unknown"]) / len(logs["unknown"])
    bad_401 = sum(s == 401 for s, _, _ in logs["bad"]) / len(logs["bad"])
    slowest = max(t for log in logs.values() for _, t, _ in log)
    print(
        f"\ndatabase cut {cut_seconds} s: cached {cached_ok:.4f} 2xx of {len(logs['cached'])}, "
        f"unknown {unknown_503:.4f} 503+Retry-After of {len(logs['unknown'])}, bad checksum "
        f"{bad_401:.4f} 401 of {len(logs['bad'])}, slowest {slowest * 1000:.0f} ms, "
        f"{gateway.store.queries - queries} queries tried, recovery {recovery:.2f} s"
    )
    assert cached_ok >= 0.999 and unknown_503 == 1.0 and bad_401 == 1.0
    assert slowest <= DB_TIMEOUT + 0.05
    assert len(upstream.received) == 1 + len(logs["cached"])


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(("path", "status"), [("/stall", 504), ("/reset", 502), ("/refused", 502)])
async def test_upstream_faults(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, path: str, status: int
) -> None:
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "f.yaml").write_text(
        "routes:\n"
        "  - {methods: [POST], path: /stall, public: true, upstream: core}\n"
        "  - {methods: [POST], path: /reset, public: true, upstream: core}\n"
        "  - {methods: [POST], path: /refused, public: true, upstream: closed}\n"
        "  - {methods: [POST], path: /fast, public: true, upstream: core}\n"
    )
    timeout = 1.0
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        policies=policies,
        upstreams={
            "core": {"url": upstream.url, "timeout_seconds": timeout},
            "closed": {"url": "http://127.0.0.1:9"},
        },
    )
    count = pick(60, 10_000) if path != "/stall" else pick(8, 200)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        statuses: Counter[int] = Counter()
        elapsed: list[float] = []
        rss_start = 0.0

        async def one() -> None:
            started = time.monotonic()
            async with http.post(gateway.proxy + path, data=b"payload") as response:
                statuses[response.status] += 1
            elapsed.append(time.monotonic() - started)

        # This machine's own latency for a request that is answered at once, printed
        # beside the figures so a reader can judge them.
        baseline = []
        for _ in range(20):
            started = time.monotonic()
            async with http.post(gateway.proxy + "/fast", data=b"payload") as response:
                assert response.status == 200
            baseline.append(time.monotonic() - started)
        slowest_normal = max(baseline)
        for i in range(0, count, 20):
            await asyncio.gather(*(one() for _ in range(min(20, count - i))))
            if i == 0:
                rss_start = _rss_mib()
        rss_end = _rss_mib()
    print(
        f"\nupstream {path}: {count} requests -> {dict(statuses)}, "
        f"{min(elapsed):.3f}-{max(elapsed):.3f} s (timeout {timeout} s; a normal request here "
        f"takes {min(baseline) * 1000:.1f}-{slowest_normal * 1000:.1f} ms), "
        f"RSS {rss_start:.0f} -> {rss_end:.0f} MiB, upstream saw {upstream.count(path)}"
    )
    assert statuses == Counter({status: count})
    if status == 504:
        late = timeout * 1.1 + 0.05 + 2 * slowest_normal
        assert all(timeout * 0.9 <= t <= late for t in elapsed)
    if path != "/refused":
        assert upstream.count(path) == count  # each POST sent upstream exactly once
    assert rss_end - rss_start < 20


async def test_random_key_flood_keeps_the_legitimate_key_cached(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    flood = pick(3_000, 100_000)
    config = make_config(tmp_path, database_url, upstream.url, cache={"max_entries": 1000})
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        legit = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        target = gateway.proxy + "/v1/me"
        async with http.get(target, headers=bearer(legit)) as response:
            assert response.status == 200
        queries = gateway.store.queries
        started = time.monotonic()
        random_keys = [key_format.generate("gwk") for _ in range(flood)]
        legit_ok = 0
        for start in range(0, flood, 50):
            batch = [*random_keys[start : start + 50], legit]

            async def get(token: str) -> int:
                async with http.get(target, headers=bearer(token)) as response:
                    return response.status

            statuses = await asyncio.gather(*(get(token) for token in batch))
            assert statuses[:-1] == [401] * (len(batch) - 1)
            legit_ok += statuses[-1] == 200
        made = gateway.store.queries - queries
        # A flood that outlasts the TTL refetches the legitimate key once per period.
        periods = math.ceil((time.monotonic() - started) / config.cache.ttl_seconds)
        cache_sizes = gateway.store.cache_sizes()
    rounds = len(range(0, flood, 50))
    print(
        f"\nrandom key flood: {flood} keys -> {made} queries, legit key {legit_ok}/{rounds} ok "
        f"with {made - flood} queries of its own over {periods} TTL period(s), "
        f"cache sizes {cache_sizes}"
    )
    # One query at most per random key, and at most one per TTL period for the legitimate one.
    assert made <= flood + periods
    assert legit_ok == rounds
    assert all(size <= 1000 for size in cache_sizes.values())
