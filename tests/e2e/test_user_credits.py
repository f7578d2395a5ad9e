"""Credits of a user (§21) through a running gateway: one pool spent by every key of the
user without credits of its own (a key's own win), X-Credits-Remaining showing the pool,
the admin API and CLI, refills, the user.credits_low / user.credits_exhausted webhooks,
(the self-service list carrying the pool: `test_selfservice_api`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.credits import pools
from gateway.webhooks.scan import scan
from tests.e2e.test_audit import admin, events
from tests.e2e.test_credits import ROUTES
from tests.e2e.test_key_controls import _cli, _get, _until
from tests.e2e.test_webhooks import FAST as FAST_WEBHOOKS
from tests.e2e.test_webhooks import Receiver, _endpoint, receiver  # noqa: F401
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    cli_config,
    gateway_with_routes,
    unique,
)


@pytest.fixture
async def gateway(tmp_path: Path, database_url: str, upstream: RecordingUpstream) -> Any:
    async with gateway_with_routes(
        tmp_path, database_url, upstream.url, ROUTES, webhooks=FAST_WEBHOOKS
    ) as running:
        yield running
        async with running.pool.acquire() as conn:  # no endpoint outlives its test
            await conn.execute("DELETE FROM webhook_endpoints")


def _pool(user: str) -> str:
    return f"/admin/v1/users/{user}/credits"


async def _spend(
    http: aiohttp.ClientSession, gateway: RunningGateway, key: dict[str, Any], path: str
) -> tuple[int, str | None, dict[str, Any]]:
    status, body, headers = await _get(http, gateway.proxy + path, bearer(key["key"]))
    return status, headers.get("X-Credits-Remaining"), body


async def test_every_key_without_credits_spends_the_pool_and_own_credits_win(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("pool")
    first = await gateway.create_key(user, ["me:read"])
    second = await gateway.create_key(user, ["me:read"])
    own = await gateway.create_key(user, ["me:read"], credits={"remaining": 100})
    stranger = await gateway.create_key(unique("other"), ["me:read"])
    status, made, _ = await admin(http, gateway, "PUT", _pool(user), {"remaining": 5})
    assert status == 200 and made == {"user_id": user, "credits": {"remaining": 5, "refill": None}}
    # The keys made before the pool spend it at once: every process reloaded them.
    seen = [
        (await _spend(http, gateway, first, "/paid/1"))[:2],
        (await _spend(http, gateway, second, "/dear/1"))[:2],
        (await _spend(http, gateway, own, "/paid/2"))[:2],  # its own balance
        (await _spend(http, gateway, first, "/free/1"))[:2],
        (await _spend(http, gateway, second, "/paid/3"))[:2],
        (await _spend(http, gateway, first, "/dear/2"))[:2],
        (await _spend(http, gateway, stranger, "/paid/4"))[:2],  # another user: unlimited
    ]
    assert seen == [
        (200, "4"), (200, "2"), (200, "99"), (200, "2"), (200, "1"), (429, "0"), (200, None),
    ]  # fmt: skip
    status, _, refused = await _spend(http, gateway, first, "/dear/3")
    assert status == 429 and refused["type"].endswith(":credits-exhausted")
    assert "user" in refused["detail"] and upstream.count("/dear/2") == 0
    status, _, _ = await _spend(http, gateway, first, "/paid/5")
    assert status == 200  # the last credit
    assert (await _spend(http, gateway, second, "/paid/6"))[:2] == (429, "0")
    # The balance shown counts what the processes spent as last reported (every sync
    # interval): reported at once here.
    await gateway.runtime.pools.report()
    status, shown, _ = await admin(http, gateway, "GET", _pool(user))
    assert status == 200 and shown["credits"] == {"remaining": 0, "refill": None}
    # Topped up: usable at once; the audit trail says who.
    status, more, _ = await admin(http, gateway, "POST", _pool(user), {"increment": 3})
    assert status == 200 and more["credits"]["remaining"] == 3
    took, _ = await _until(http, gateway.proxy + "/paid/7", bearer(second["key"]), 200)
    assert took < 1
    found = await events(http, gateway, user_id=user, action="user.credits")
    assert (
        found[0]["details"]["increment"] == 3 and found[1]["details"]["credits"]["remaining"] == 5
    )
    # Removed: the keys are unlimited again, on the next request.
    status, removed, _ = await admin(http, gateway, "DELETE", _pool(user))
    assert status == 200 and removed["credits"] is None
    status, left, _ = await _spend(http, gateway, first, "/dear/4")
    assert (status, left) == (200, None)
    assert (await admin(http, gateway, "GET", _pool(user)))[1]["credits"] is None


async def test_the_pool_is_spent_once_whichever_keys_spend_it_at_once(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("pool")
    keys = [await gateway.create_key(user, ["me:read"]) for _ in range(4)]
    assert (await admin(http, gateway, "PUT", _pool(user), {"remaining": 200}))[0] == 200
    statuses: list[int] = []

    async def client(key: dict[str, Any], n: int) -> None:
        for i in range(80):
            statuses.append((await _spend(http, gateway, key, f"/paid/{n}-{i}"))[0])

    await asyncio.gather(*(client(key, n) for n, key in enumerate(keys)))
    assert statuses.count(200) == 200 and statuses.count(429) == 120
    usage_spent = 0
    await gateway.runtime.usage.flush(gateway.pool, 5)
    for key in keys:
        status, usage, _ = await admin(http, gateway, "GET", f"/admin/v1/keys/{key['id']}/usage")
        assert status == 200, usage
        usage_spent += sum(bucket["credits_spent"] for bucket in usage["buckets"])
    assert usage_spent == 200  # each key's usage says what it spent of the pool


async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("pool")
    for method, body, field_name in (
        ("PUT", {}, "credits.remaining"),
        ("PUT", {"remaining": -1}, "credits.remaining"),
        ("PUT", {"remaining": 5, "refill": {"interval": "week", "amount": 5}}, "credits.refill.interval"),
        ("PUT", {"remaining": 5, "extra": 1}, "credits"),
        ("POST", {"increment": -2}, "increment"),
        ("POST", {"add": 2}, "body"),
    ):  # fmt: skip
        status, problem, _ = await admin(http, gateway, method, _pool(user), body)
        assert status == 422, (body, problem)
        assert field_name in [error["field"] for error in problem["errors"]], problem
    status, problem, _ = await admin(http, gateway, "POST", _pool(user), {"increment": 2})
    assert status == 409 and problem["type"].endswith(":unlimited-credits")
    assert (await admin(http, gateway, "GET", _pool(user)))[1]["credits"] is None


async def test_a_refill_starts_full_and_runs_once_per_scheduled_time(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("pool")
    key = await gateway.create_key(user, ["me:read"])
    refill = {"interval": "day", "amount": 50}
    status, made, _ = await admin(http, gateway, "PUT", _pool(user), {"refill": refill})
    assert status == 200 and made["credits"] == {"remaining": 50, "refill": refill}
    assert (await _spend(http, gateway, key, "/dear/1"))[:2] == (200, "48")
    status, kept, _ = await admin(http, gateway, "POST", _pool(user), {"set": 60})
    assert status == 200 and kept["credits"] == {"remaining": 60, "refill": refill}
    async with gateway.pool.acquire() as conn:
        await conn.execute(
            "UPDATE user_credits SET credits_refilled_at = now() - interval '2 days',"
            " credits_remaining = 0 WHERE user_id = $1",
            user,
        )
        assert await pools.refill_due(conn) == 1
        assert await pools.refill_due(conn) == 0  # once per scheduled time
    # What this process still holds counts towards the refilled balance, which is 50.
    assert (await admin(http, gateway, "GET", _pool(user)))[1]["credits"]["remaining"] == 50
    await _until(http, gateway.proxy + "/paid/2", bearer(key["key"]), 200)
    found = await events(http, gateway, user_id=user, action="user.refilled")
    assert found[0]["actor"] == "system" and found[0]["details"]["refill"] == refill


async def test_low_and_exhausted_pools_are_announced_once(
    gateway: RunningGateway,
    http: aiohttp.ClientSession,
    receiver: Receiver,  # noqa: F811
) -> None:
    hook = await _endpoint(
        http, gateway, receiver.url, ["user.credits_low", "user.credits_exhausted"]
    )
    user = unique("pool")
    key = await gateway.create_key(user, ["me:read"])
    assert (await admin(http, gateway, "PUT", _pool(user), {"remaining": 20}))[0] == 200

    async def announced() -> list[tuple[str, int]]:
        """Two scan rounds (the second finds nothing new); this user's events so far.
        (Other tests' pools share the database: their events are not counted.)"""
        await gateway.runtime.pools.give_back()  # what it holds, back exactly: exact numbers
        for _ in range(2):
            async with gateway.pool.acquire() as conn:
                await scan(conn)
        await asyncio.sleep(0.3)  # delivered within the poll interval
        return [
            (event["type"], event["data"]["remaining"])
            for event in receiver.events(hook["secret"])
            if event["data"]["user_id"] == user
        ]

    for n in range(2):
        assert (await _spend(http, gateway, key, f"/paid/{n}"))[0] == 200
    assert await announced() == []  # 18 of 20: not low
    await admin(http, gateway, "POST", _pool(user), {"decrement": 16})
    assert await announced() == [("user.credits_low", 2)]  # 2 of 20: low, once
    assert (await _spend(http, gateway, key, "/dear/1"))[0] == 200
    assert await announced() == [("user.credits_low", 2), ("user.credits_exhausted", 0)]
    low = next(e for e in receiver.events(hook["secret"]) if e["data"]["user_id"] == user)
    assert low["data"]["basis"] == 20 and low["data"]["actor"] == "system"


async def test_the_cli_shows_sets_changes_and_removes_a_pool(
    tmp_path: Path, database_url: str, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    config = cli_config(tmp_path, gateway.config)
    user = unique("cli")

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(_cli, "users", "credits", user, *args, config=config)

    none = await cli()
    assert none.returncode == 0 and "no credit pool" in none.stdout
    made = await cli("--credits", "40", "--refill", "1000/month@1", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["credits"] == {
        "remaining": 40,
        "refill": {"interval": "month", "amount": 1000, "day": 1},
    }
    more = await cli("--decrement", "15")
    assert more.returncode == 0 and "credits: 25 (refilled to 1000 monthly" in more.stdout
    assert (await admin(http, gateway, "GET", _pool(user)))[1]["credits"]["remaining"] == 25
    for flags, flag in ((["--credits", "-1"], "--remaining"), (["--refill", "5/week"], "--refill"),
                        (["--credits", "3", "--increment", "1"], "--credits")):  # fmt: skip
        bad = await cli(*flags)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and flag in bad.stderr, (
            bad.stderr
        )
    gone = await cli("--remove", "--json")
    assert gone.returncode == 0 and json.loads(gone.stdout)["credits"] is None
    missing = await cli("--increment", "1")
    assert missing.returncode == 1 and "no credit pool" in missing.stderr
