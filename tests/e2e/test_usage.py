"""Usage per key (§17) through running gateways: what is counted as what, exact sums
across processes, every bucket of a range, the admin API, the owner's API and the CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_audit import admin
from tests.e2e.test_key_controls import _cli, _get
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    routes_dir,
    running_gateway,
    unique,
)

ROUTES = (
    "upstream: core\nroutes:\n"
    "  - {name: paid, methods: [GET], path: '/paid/{n}', scopes: [me:read], cost: 2}\n"
    "  - {name: write, methods: [GET], path: '/write/{n}', scopes: [projects:write]}\n"
    "  - {name: limited, methods: [GET], path: '/limited/{n}', scopes: [me:read],"
    " rate_limit: [per-key], cost: 0}\n"
    "rate_limits:\n"
    "  per-key: {limit: 1, per_seconds: 60, by: key}\n"
)
ZERO = dict.fromkeys(
    ("allowed", "rejected", "denied", "rate_limited", "credits_exhausted", "credits_spent"), 0
)


@pytest.fixture
async def gateways(tmp_path: Path, database_url: str, upstream: RecordingUpstream) -> Any:
    """Two gateways (two processes' worth of counters) on one database."""
    directory = routes_dir(tmp_path, ROUTES)
    configs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        configs.append(
            make_config(
                tmp_path / name,
                database_url,
                upstream.url,
                directory,
                usage={"flush_seconds": 3600},
            )  # the test flushes
        )
    async with running_gateway(configs[0]) as one, running_gateway(configs[1]) as two:
        yield one, two


async def _flush(*gateways: RunningGateway) -> None:
    for gateway in gateways:
        await gateway.runtime.usage.flush(gateway.pool)


async def test_each_outcome_is_counted_and_processes_add_up_exactly(
    gateways: tuple[RunningGateway, RunningGateway], http: aiohttp.ClientSession
) -> None:
    one, two = gateways
    key = await one.create_key(unique("use"), ["me:read"], credits={"remaining": 13})
    auth = bearer(key["key"])
    for gateway in (one, two):
        for n in range(3):
            assert (await _get(http, f"{gateway.proxy}/paid/{n}", auth))[0] == 200
        assert (await _get(http, gateway.proxy + "/write/1", auth))[0] == 403
    assert (await _get(http, one.proxy + "/limited/1", auth))[0] == 200
    assert (await _get(http, one.proxy + "/limited/2", auth))[0] == 429  # rate-limited
    assert (await _get(http, two.proxy + "/paid/9", auth))[0] == 429  # 1 of 13 credits left
    await _flush(one, two)
    await admin(http, one, "PATCH", f"/admin/v1/keys/{key['id']}", {"enabled": False})
    await asyncio.sleep(0.3)  # the NOTIFY
    assert (await _get(http, two.proxy + "/paid/1", auth))[0] == 401
    await _flush(one, two)
    status, found, _ = await admin(
        http, one, "GET", f"/admin/v1/keys/{key['id']}/usage?granularity=hour"
    )
    assert status == 200 and found["key_id"] == key["id"] and found["granularity"] == "hour"
    assert len(found["buckets"]) == 48  # the last 48 hours, this one included, zeros too
    *earlier, now = found["buckets"]
    assert all(bucket == {**ZERO, "start": bucket["start"]} for bucket in earlier)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # allowed: 6 paid (2 credits each) + 1 limited (free), in two processes.
    assert now["start"] == hour.isoformat().replace("+00:00", "Z")
    assert {name: value for name, value in now.items() if name != "start"} == {
        "allowed": 7, "rejected": 1, "denied": 2, "rate_limited": 1,
        "credits_exhausted": 1, "credits_spent": 12,
    }  # fmt: skip


async def test_ranges_are_checked_and_unknown_keys_are_404(
    gateways: tuple[RunningGateway, RunningGateway], http: aiohttp.ClientSession
) -> None:
    one, _ = gateways
    key = await one.create_key(unique("use"), ["me:read"])
    path = f"/admin/v1/keys/{key['id']}/usage"
    status, days, _ = await admin(http, one, "GET", path)
    assert status == 200 and days["granularity"] == "day" and len(days["buckets"]) == 30
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert days["buckets"][-1]["start"] == today.isoformat().replace("+00:00", "Z")
    start = (today - timedelta(days=3)).isoformat()
    status, some, _ = await admin(
        http, one, "GET", f"{path}?from={start.replace('+', '%2B')}&granularity=day"
    )
    assert status == 200 and len(some["buckets"]) == 4
    far = (today - timedelta(days=100)).isoformat().replace("+", "%2B")
    for query, field in (
        ("granularity=week", "granularity"),
        (f"granularity=hour&from={far}", "from"),  # 2,400 hours: more than 2,000 buckets
        ("from=yesterday", "from"),
        ("since=2026-01-01T00:00:00Z", "since"),
    ):
        status, body, _ = await admin(http, one, "GET", f"{path}?{query}")
        assert status == 422 and body["errors"][0]["field"] == field, (query, body)
    status, _, _ = await admin(
        http, one, "GET", "/admin/v1/keys/00000000-0000-0000-0000-000000000000/usage"
    )
    assert status == 404


async def test_the_cli_prints_days_with_totals(
    tmp_path: Path,
    database_url: str,
    gateways: tuple[RunningGateway, RunningGateway],
    http: aiohttp.ClientSession,
) -> None:
    one, _ = gateways
    key = await one.create_key(unique("use"), ["me:read"])
    for n in range(4):
        await _get(http, f"{one.proxy}/paid/{n}", bearer(key["key"]))
    await _flush(one)
    config = tmp_path / "cli.yaml"
    config.write_text(f"database: {{url: '{database_url}'}}\nstate_dir: {tmp_path}/state\n")
    done = await asyncio.to_thread(_cli, "keys", "usage", key["id"], "--days", "3", config=config)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["start", "allowed", "rejected", "denied", "rate_limited",
                                "credits_exhausted", "credits_spent"]  # fmt: skip
    assert len(lines) == 1 + 3 + 1 and lines[-1].split()[:2] == ["total", "4"]
    shown = await asyncio.to_thread(
        _cli, "keys", "usage", key["id"], "--hourly", "--days", "1", "--json", config=config
    )
    assert len(json.loads(shown.stdout)["buckets"]) == 24
    bad = await asyncio.to_thread(_cli, "keys", "usage", key["id"], "--days", "0", config=config)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--days" in bad.stderr
