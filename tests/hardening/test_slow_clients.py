"""Slowloris: idle and trickling connections are closed at the header deadline while a
legitimate client keeps its latency and success rate."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from gateway.foundation.config import Config
from tests.hardening.scale import pick
from tests.support import RecordingUpstream, make_config, running_gateway

DEADLINE = 2.0


async def _legit(url: str, count: int) -> tuple[list[float], int]:
    latencies, ok = [], 0
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            started = time.perf_counter()
            try:
                async with http.get(url) as response:
                    await response.read()
                    ok += response.status == 200
            except aiohttp.ClientError:
                pass
            latencies.append(time.perf_counter() - started)
    return latencies, ok


async def _attacker(port: int, trickle: bool, closed_after: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        if trickle:
            for byte in b"GET /v1/public/x HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 0.25) == b"":
                        break
                except TimeoutError:
                    continue
        else:
            await asyncio.wait_for(reader.read(), DEADLINE + 5)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        closed_after.append(time.monotonic() - started)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def test_slowloris(tmp_path: Path, database_url: str, upstream: RecordingUpstream) -> None:
    config = make_config(
        tmp_path, database_url, upstream.url, limits={"header_timeout_seconds": DEADLINE}
    )
    idle, trickling, legit = pick(150, 500), pick(150, 500), pick(300, 2000)
    # `gateway serve` freezes its start-up heap out of the collector (Options.freeze_gc);
    # in-process, the heap of every test run before this one would otherwise make a
    # full collection a tens-of-ms pause inside the measured window.
    gc.collect()
    gc.freeze()
    try:
        await _slowloris(config, idle, trickling, legit)
    finally:
        gc.unfreeze()


async def _slowloris(config: Config, idle: int, trickling: int, legit: int) -> None:
    async with running_gateway(config) as gateway:
        port = urlsplit(gateway.proxy).port
        assert port is not None
        url = gateway.proxy + "/v1/public/x"
        baseline, _ = await _legit(url, legit)
        closed_after: list[float] = []
        attackers = [
            asyncio.create_task(_attacker(port, trickle, closed_after))
            for trickle in [False] * idle + [True] * trickling
        ]
        await asyncio.sleep(0.2)
        under_attack, ok = await _legit(url, legit)
        await asyncio.gather(*attackers)
    print(
        f"\nslowloris: {idle} idle + {trickling} trickling closed after "
        f"{min(closed_after):.2f}-{max(closed_after):.2f} s (deadline {DEADLINE} s); legit p99 "
        f"{p99(baseline) * 1000:.1f} ms -> {p99(under_attack) * 1000:.1f} ms, "
        f"success {ok / legit:.4f}"
    )
    assert all(DEADLINE - 1 <= t <= DEADLINE + 1 for t in closed_after)
    assert ok / legit >= 0.999
    # 2x the baseline, with a 5 ms floor: on loopback the baseline p99 is ~2 ms, where
    # scheduling noise alone on a 2-core machine exceeds 2x.
    assert p99(under_attack) <= max(2 * p99(baseline), p99(baseline) + 0.005)
