"""Credits (§16) through a running gateway: route costs, 429 `credits-exhausted`,
X-Credits-Remaining, the order of checks, the admin API, the decision endpoints, the CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_audit import admin, events
from tests.e2e.test_key_controls import _cli, _get, _until
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    cli_config,
    gateway_with_routes,
    unique,
)

ROUTES = (
    "upstream: core\nroutes:\n"
    "  - {name: paid, methods: [GET], path: '/paid/{n}', scopes: [me:read]}\n"
    "  - {name: dear, methods: [GET], path: '/dear/{n}', scopes: [me:read], cost: 2}\n"
    "  - {name: free, methods: [GET], path: '/free/{n}', scopes: [me:read], cost: 0}\n"
    "  - {name: write, methods: [GET], path: '/write/{n}', scopes: [projects:write]}\n"
    "  - {name: limited, methods: [GET], path: '/limited/{n}', scopes: [me:read],"
    " rate_limit: [per-key]}\n"
    "rate_limits:\n"
    "  per-key: {limit: 1, per_seconds: 60, by: key}\n"
)


@pytest.fixture
async def gateway(tmp_path: Path, database_url: str, upstream: RecordingUpstream) -> Any:
    async with gateway_with_routes(
        tmp_path,
        database_url,
        upstream.url,
        ROUTES,
        decisions={"enabled": True, "listen": {"host": "127.0.0.1", "port": 0}},
    ) as running:
        yield running


async def _key(
    http: aiohttp.ClientSession, gateway: RunningGateway, credits: Any
) -> dict[str, Any]:
    body = {"user_id": unique("cr"), "name": "paid", "scopes": ["me:read"], "credits": credits}
    status, key, _ = await admin(http, gateway, "POST", "/admin/v1/keys", body)
    assert status == 201, key
    return dict(key)


async def test_routes_cost_what_they_say_and_an_empty_balance_is_refused(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _key(http, gateway, {"remaining": 3})
    assert key["credits"] == {"remaining": 3, "refill": None}
    auth = bearer(key["key"])
    seen = []
    for path in ("/paid/1", "/dear/1", "/free/1", "/paid/2", "/dear/2"):
        status, body, headers = await _get(http, gateway.proxy + path, auth)
        seen.append((path, status, headers.get("X-Credits-Remaining")))
    assert seen == [
        ("/paid/1", 200, "2"),
        ("/dear/1", 200, "0"),
        ("/free/1", 200, "0"),  # free: passes with an empty balance
        ("/paid/2", 429, "0"),
        ("/dear/2", 429, "0"),
    ]
    assert body["type"].endswith(":credits-exhausted") and "Retry-After" not in headers
    assert upstream.count("/paid/2") == 0 and upstream.count("/dear/2") == 0
    # Given more through the admin API: usable at once (every process is told).
    status, answer, _ = await admin(
        http, gateway, "POST", f"/admin/v1/keys/{key['id']}/credits", {"increment": 5}
    )
    assert status == 200 and answer == {"credits": {"remaining": 5, "refill": None}}
    took, _ = await _until(http, gateway.proxy + "/paid/3", auth, 200)
    assert took < 1
    found = await events(http, gateway, key_id=key["id"], action="key.credits")
    assert found[0]["details"]["increment"] == 5


async def test_refused_requests_spend_nothing_and_credits_are_checked_last(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await _key(http, gateway, {"remaining": 2})
    auth = bearer(key["key"])
    assert (await _get(http, gateway.proxy + "/write/1", auth))[0] == 403  # a missing scope
    assert (await _get(http, gateway.proxy + "/limited/1", auth))[0] == 200
    assert (await _get(http, gateway.proxy + "/limited/2", auth))[0] == 429  # rate-limited
    status, _, headers = await _get(http, gateway.proxy + "/paid/1", auth)
    assert status == 200 and headers["X-Credits-Remaining"] == "0"
    # Switched off with nothing left: the credential is checked first (401, not 429).
    await admin(http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"enabled": False})
    _, body = await _until(http, gateway.proxy + "/paid/2", auth, 401)
    assert body["type"].endswith(":key-disabled")


async def test_an_exhausted_key_with_a_refill_is_told_when(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await _key(
        http, gateway, {"remaining": 0, "refill": {"interval": "month", "amount": 10, "day": 31}}
    )
    status, body, headers = await _get(http, gateway.proxy + "/paid/1", bearer(key["key"]))
    now = datetime.now(UTC)
    month = now.replace(day=28) + timedelta(days=4)  # some day next month
    last_day = (month.replace(day=1) - timedelta(days=1)).day  # this month's last day
    due = now.replace(day=last_day, hour=0, minute=0, second=0, microsecond=0)
    if due <= now:
        due = (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        due = due.replace(hour=0, minute=0, second=0, microsecond=0)
    assert status == 429 and body["type"].endswith(":credits-exhausted")
    assert abs(int(headers["Retry-After"]) - (due - now).total_seconds()) < 5


async def test_decision_endpoints_spend_and_refuse_alike(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _key(http, gateway, {"remaining": 1})
    host, port = gateway.decisions_address
    url = f"http://{host}:{port}/decisions/forward-auth"
    asked = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/paid/7", **bearer(key["key"])}
    status, _, headers = await _get(http, url, asked)
    assert status == 200 and headers["X-Credits-Remaining"] == "0"
    status, body, headers = await _get(http, url, asked)
    assert status == 429 and body["type"].endswith(":credits-exhausted")
    assert upstream.count("/paid") == 0  # decisions never forward


async def test_bad_credits_are_refused_naming_the_field_and_change_nothing(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    base = {"user_id": unique("cr"), "name": "bad", "scopes": ["me:read"]}
    cases = [
        ({"remaining": -1}, "credits.remaining"),
        ({"remaining": 5, "refill": {"interval": "day", "amount": 5, "day": 2}}, "credits.refill.day"),
        ({"remaining": 5, "refill": {"interval": "month", "amount": 0, "day": 2}}, "credits.refill.amount"),
        ({"remaining": 5, "refill": {"interval": "week", "amount": 5}}, "credits.refill.interval"),
    ]  # fmt: skip
    for credits, field in cases:
        status, body, _ = await admin(
            http, gateway, "POST", "/admin/v1/keys", {**base, "credits": credits}
        )
        assert status == 422 and field in [e["field"] for e in body["errors"]], body
    key = await _key(http, gateway, {"remaining": 4})
    path = f"/admin/v1/keys/{key['id']}/credits"
    for change, field in (({"set": -3}, "set"), ({"increment": 1, "set": 2}, "body"), ({}, "body")):
        status, body, _ = await admin(http, gateway, "POST", path, change)
        assert status == 422 and body["errors"][0]["field"] == field, body
    unlimited = await _key(http, gateway, None)
    status, body, _ = await admin(
        http, gateway, "POST", f"/admin/v1/keys/{unlimited['id']}/credits", {"decrement": 1}
    )
    assert status == 409
    status, _, _ = await admin(
        http, gateway, "POST", "/admin/v1/keys/00000000-0000-0000-0000-000000000000/credits",
        {"set": 1},
    )  # fmt: skip
    assert status == 404
    status, shown, _ = await admin(http, gateway, "GET", f"/admin/v1/keys/{key['id']}")
    assert shown["credits"] == {"remaining": 4, "refill": None}


async def test_rotation_carries_the_balance_to_the_new_key(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await _key(http, gateway, {"remaining": 3, "refill": {"interval": "day", "amount": 3}})
    assert (await _get(http, gateway.proxy + "/paid/1", bearer(key["key"])))[0] == 200
    status, new, _ = await admin(
        http, gateway, "POST", f"/admin/v1/keys/{key['id']}/rotate", {"grace_seconds": 60}
    )
    assert status == 201 and new["credits"]["refill"] == {"interval": "day", "amount": 3}
    # The old key, in its grace, spends from the new one's balance.
    await asyncio.sleep(0.3)  # the rotation's NOTIFY
    statuses = [
        (await _get(http, gateway.proxy + f"/paid/{n}", bearer(k)))[0]
        for n, k in enumerate([key["key"], new["key"], key["key"]])
    ]
    assert statuses == [200, 200, 429]


async def test_the_cli_sets_credits_and_explains_costs(
    tmp_path: Path, database_url: str, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    config = cli_config(tmp_path, gateway.config)
    made = await asyncio.to_thread(
        _cli, "keys", "create", "--user", unique("cli"), "--name", "n", "--scope", "me:read",
        "--credits", "5", "--refill", "100/month@1", "--json", config=config,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["credits"] == {
        "remaining": 5,
        "refill": {"interval": "month", "amount": 100, "day": 1},
    }
    more = await asyncio.to_thread(_cli, "keys", "credits", key["id"], "--increment", "7",
                                   config=config)  # fmt: skip
    assert more.returncode == 0 and more.stdout.startswith("credits: 12 (refilled to 100 monthly")
    for flags, flag in (
        (["keys", "update", key["id"], "--refill", "100/week"], "--refill"),
        (["keys", "update", key["id"], "--refill", "100/month"], "--refill"),
        (["keys", "credits", key["id"], "--set", "-1"], "--set"),
    ):
        bad = await asyncio.to_thread(_cli, *flags, config=config)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and flag in bad.stderr, (
            bad.stderr
        )
    free = await asyncio.to_thread(_cli, "keys", "update", key["id"], "--unlimited-credits",
                                   "--json", config=config)  # fmt: skip
    assert free.returncode == 0 and json.loads(free.stdout)["credits"] is None
    explained = await asyncio.to_thread(_cli, "policy", "explain", "GET", "/dear/1", config=config)
    assert "cost 2 credits" in explained.stdout, explained.stdout
