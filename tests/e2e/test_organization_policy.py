"""An organization's key policy (§21): the longest key lifetime it accepts, set through
the admin API or the CLI, enforced on routes whose `member_of` names it (403, the key
working elsewhere), audited, and applied by another gateway within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_key_controls import _cli
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    admin_headers,
    bearer,
    cli_config,
    make_config,
    routes_dir,
    running_gateway,
    unique,
)

SLUG = "key-lifetime-exceeds-policy"
POLICY = """\
upstream: core
routes:
  - {methods: [GET], path: /v1/me, scopes: [me:read]}
  - {methods: [GET], path: '/v1/organizations/{org}/projects', scopes: [me:read],
     member_of: {organization: org}}
"""


@pytest.fixture
async def two(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    """Two gateways on one database, each with its own caches and listener."""
    policies = routes_dir(tmp_path, POLICY)
    first = make_config(tmp_path / "a", database_url, upstream.url, policies)
    second = make_config(tmp_path / "b", database_url, upstream.url, policies)
    async with running_gateway(first) as a, running_gateway(second) as b:
        yield a, b


async def policy(
    http: aiohttp.ClientSession, gateway: RunningGateway, org: str, body: Any = None
) -> tuple[int, Any]:
    method = "GET" if body is None else "PUT"
    url = f"{gateway.admin}/admin/v1/organizations/{org}/key-policy"
    async with http.request(method, url, json=body, headers=admin_headers()) as r:
        return r.status, await r.json()


async def status_of(
    http: aiohttp.ClientSession, gateway: RunningGateway, path: str, key: str
) -> int:
    async with http.get(gateway.proxy + path, headers=bearer(key)) as r:
        return r.status


async def until_status(
    http: aiohttp.ClientSession, gateway: RunningGateway, path: str, key: str, wanted: int
) -> float:
    started = time.monotonic()
    while (seen := await status_of(http, gateway, path, key)) != wanted:
        assert time.monotonic() - started < 1.0, f"{path}: {seen}, not {wanted} within 1 s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_key_over_an_organizations_limit_is_refused_there_only(
    two: tuple[RunningGateway, RunningGateway], http: aiohttp.ClientSession
) -> None:
    a, b = two
    user = unique("org")
    acme, globex = unique("acme"), unique("globex")
    for org in (acme, globex):
        await a.member(user, "organization", org)
    key = await a.create_key(user, ["me:read"], expires_in_days=60)
    short = await a.create_key(user, ["me:read"], expires_in_days=20)
    at_acme = f"/v1/organizations/{acme}/projects"
    for gateway in (a, b):  # cached everywhere first
        assert await status_of(http, gateway, at_acme, key["key"]) == 200

    assert await policy(http, a, acme) == (
        200, {"organization": acme, "max_lifetime_days": None, "updated_at": None}
    )  # fmt: skip
    status, set_to = await policy(http, a, acme, {"max_lifetime_days": 30})
    assert status == 200 and set_to["max_lifetime_days"] == 30 and set_to["updated_at"]
    async with http.get(a.proxy + at_acme, headers=bearer(key["key"])) as r:
        problem = await r.json(content_type=None)
        assert r.status == 403 and problem["type"].endswith(SLUG)
        assert problem["max_lifetime_days"] == 30 and "30 days" in problem["detail"]
    took = await until_status(http, b, at_acme, key["key"], 403)
    print(f"\nan organization's key policy applied by another gateway after {took * 1000:.0f} ms")
    for gateway in (a, b):
        assert await status_of(http, gateway, at_acme, short["key"]) == 200
        assert await status_of(http, gateway, f"/v1/organizations/{globex}/projects",
                               key["key"]) == 200  # fmt: skip
        assert await status_of(http, gateway, "/v1/me", key["key"]) == 200

    status, cleared = await policy(http, b, acme, {"max_lifetime_days": None})
    assert status == 200 and cleared["max_lifetime_days"] is None
    assert await status_of(http, b, at_acme, key["key"]) == 200
    await until_status(http, a, at_acme, key["key"], 200)

    async with a.pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT actor, details FROM audit_events"
            " WHERE action = 'organization.key_policy_updated' AND details->>'organization' = $1"
            " ORDER BY id",
            acme,
        )
    changes = [(e["details"], e["actor"]) for e in events]
    assert [d.count('"max_lifetime_days": 30') for d, _ in changes] == [1, 0]
    assert all(actor == "admin" for _, actor in changes)


async def test_unknown_organizations_and_bad_limits_are_refused(
    two: tuple[RunningGateway, RunningGateway], http: aiohttp.ClientSession
) -> None:
    a, _ = two
    status, problem = await policy(http, a, unique("nobody"))
    assert status == 404 and problem["type"].endswith("organization-not-found")
    status, problem = await policy(http, a, unique("nobody"), {"max_lifetime_days": 30})
    assert status == 404
    org = unique("acme")
    await a.member(unique("org"), "organization", org)
    for bad in ({"max_lifetime_days": 0}, {"max_lifetime_days": "30"}, {}, {"days": 3}):
        status, problem = await policy(http, a, org, bad)
        assert status == 422, bad
        assert {e["field"] for e in problem["errors"]} & {"max_lifetime_days", "days"}


async def test_the_cli_shows_sets_and_clears_it(
    two: tuple[RunningGateway, RunningGateway],
    tmp_path: Path,
    database_url: str,
    http: aiohttp.ClientSession,
) -> None:
    a, _ = two
    org = unique("acme")
    await a.member(unique("org"), "organization", org)
    config = cli_config(tmp_path, a.config)

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(_cli, "orgs", "policy", *args, config=config)

    shown = await cli(org)
    assert shown.returncode == 0 and shown.stdout.strip() == f"{org}: no limit of its own"
    made = await cli(org, "--max-lifetime-days", "14")
    assert made.returncode == 0 and made.stdout.strip() == f"{org}: keys must expire within 14 days"
    assert (await policy(http, a, org))[1]["max_lifetime_days"] == 14
    cleared = await cli(org, "--clear", "--json")
    assert cleared.returncode == 0 and '"max_lifetime_days":null' in cleared.stdout
    unknown = await cli(unique("nobody"))
    assert unknown.returncode == 1 and "no membership names organization" in unknown.stderr
    bad = await cli(org, "--max-lifetime-days", "0")
    assert bad.returncode == 1 and bad.stderr.startswith("gateway: --max-lifetime-days: must be")
