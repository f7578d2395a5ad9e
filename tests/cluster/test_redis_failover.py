"""Shared rate limits on a highly available Redis (§22), as real hosts: a master with a
replica and three Sentinels (`redis+sentinel://`), and a Cluster of three masters
with a replica each (`redis+cluster://`). Three gateways behind the nginx balancer
share a by-key limit through it; then the master's host vanishes under load (its
processes killed, its address silent) and Redis fails over by itself."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.cluster.clients import FRONT, load, new_key, status_of
from tests.cluster.test_cluster import FULL, LOAD_SECONDS
from tests.cluster.topology import GATEWAYS, MASTER_NAME, REDIS_HOSTS, Cluster, reason

LIMIT, BURST = 20, 20  # per-key, as tests/cluster/topology.py writes the policy


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def net(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    why = reason()
    if why is not None:
        pytest.skip(why)
    built = Cluster(tmp_path_factory.mktemp(f"redis-{request.param}"), redis=request.param)
    try:
        built.up()
        yield built
    finally:
        built.down()


async def _shared(seconds: float) -> Counter[int]:
    """A fresh key's by-key limit through the three hosts: what was admitted."""
    async with aiohttp.ClientSession() as http:
        key = await new_key(http)
    seen = await load(f"{FRONT}/limited/1", key["key"], seconds, connections=16)
    return Counter(status for _, status in seen)


def _bound(seconds: float) -> float:
    return LIMIT * seconds * 1.1 + BURST


async def test_a_by_key_limit_is_shared_through_it(net: Cluster) -> None:
    statuses = await _shared(LOAD_SECONDS)
    print(f"\n{net.redis}: limit {LIMIT}/s burst {BURST} through three hosts for"
          f" {LOAD_SECONDS:g} s: {dict(statuses)} (at most {_bound(LOAD_SECONDS):.0f})")  # fmt: skip
    assert set(statuses) <= {200, 429}
    assert LIMIT * LOAD_SECONDS * 0.8 <= statuses[200] <= _bound(LOAD_SECONDS)


def _new_master_answers(net: Cluster) -> bool:
    """Sentinel names another master and it answers as one; or the Cluster serves
    every slot again without the lost master."""
    survivor = f"{REDIS_HOSTS['r2']}"
    if net.redis == "sentinel":
        named = net.redis_cli(f"{survivor}:26379", "sentinel", "get-master-addr-by-name",
                              MASTER_NAME).split()  # fmt: skip
        if not named or named[0] == REDIS_HOSTS["r1"]:
            return False
        return "role:master" in net.redis_cli(f"{named[0]}:{named[1]}", "info", "replication")
    nodes = net.redis_cli(f"{survivor}:6379", "cluster", "nodes")
    lost = [line for line in nodes.splitlines() if f"{REDIS_HOSTS['r1']}:6379@" in line]
    return bool(lost) and "fail" in lost[0] and net.redis_cluster_ok(f"{survivor}:6379")


async def _key_on_the_lost_master(net: Cluster, http: aiohttp.ClientSession) -> dict[str, str]:
    """A key whose limit state lives on the master that will be lost (a Cluster spreads
    keys over three)."""
    for _ in range(20):
        key = await new_key(http)
        await status_of(http, f"{FRONT}/limited/2", key["key"])
        held = net.redis_cli(f"{REDIS_HOSTS['r1']}:6379", "--scan", "--pattern", "gateway:*")
        if net.redis != "cluster" or key["id"] in held:
            return key
    raise AssertionError("no key's limit landed on the first master in 20 tries")


def _count(log: Path | None, text: str) -> int:
    assert log is not None
    return log.read_text(errors="replace").count(text)


async def test_the_master_vanishes_under_load_and_limits_are_shared_again(net: Cluster) -> None:
    logs = {name: net.hosts[name].log for name in GATEWAYS}
    downs = {name: _count(log, "unreachable") for name, log in logs.items()}
    backs = {name: _count(log, "is back") for name, log in logs.items()}
    back_at: dict[str, float] = {}
    answered: list[float] = []
    seconds = LOAD_SECONDS + 6
    async with aiohttp.ClientSession() as http:
        key = await _key_on_the_lost_master(net, http)

    async def failover() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(net.vanish, "r1")
        lost = time.monotonic()
        while not await asyncio.to_thread(_new_master_answers, net):
            assert time.monotonic() - lost < 20, "Redis did not fail over within 20 s"
            await asyncio.sleep(0.05)
        answered.append(time.monotonic())

    async def watch() -> None:
        ends = time.monotonic() + seconds + 6
        while time.monotonic() < ends and len(back_at) < len(logs):
            for name, log in logs.items():
                if name not in back_at and _count(log, "is back") > backs[name]:
                    back_at[name] = time.monotonic()
            await asyncio.sleep(0.05)

    seen, _, _ = await asyncio.gather(
        load(f"{FRONT}/limited/2", key["key"], seconds, connections=8, pause=0.01),
        failover(),
        watch(),
    )
    statuses = Counter(status for _, status in seen)
    went_down = [name for name, log in logs.items() if _count(log, "unreachable") > downs[name]]
    assert answered, "Redis did not fail over"
    rejoined = {name: back_at[name] - answered[0] for name in went_down if name in back_at}
    after = await _shared(2.0)
    print(f"\n{net.redis}: the master's host lost under load{' (full)' if FULL else ''}:"
          f" {dict(statuses)}; hosts that fell back to local limits: {went_down or 'none'},"
          f" shared again {', '.join(f'{n} {s:.2f} s' for n, s in rejoined.items()) or '-'}"
          f" after the new master answered; then a fresh key for 2 s: {dict(after)}"
          f" (at most {_bound(2.0):.0f})")  # fmt: skip
    assert set(statuses) <= {200, 429}, "a request failed during the failover"
    assert set(rejoined) == set(went_down), "a host did not share its limits again"
    assert all(took <= 5.0 for took in rejoined.values())
    assert set(after) <= {200, 429} and 0 < after[200] <= _bound(2.0)
