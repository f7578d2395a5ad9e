"""The new-network notice (§21): the first use of a key from a network (a /24 or /48)
not seen for it within `remember_days` is announced once — an audit event and a
webhook `key.new_network` — across all hosts, with no write per request; the admin
API lists each key's networks of the last 30 days."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    RecordingUpstream,
    RunningGateway,
    admin_headers,
    bearer,
    make_config,
    running_gateway,
    unique,
)

SETTINGS: dict[str, Any] = {
    "key_policy": {"new_network_notice": {"enabled": True}},
    "trusted_proxies": ["127.0.0.1/32"],  # the tests play clients behind a balancer
    "webhooks": {"allowed_networks": ["127.0.0.0/8"]},
}


@pytest.fixture
async def two(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    first = make_config(tmp_path / "a", database_url, upstream.url, **SETTINGS)
    second = make_config(tmp_path / "b", database_url, upstream.url, **SETTINGS)
    async with running_gateway(first) as a, running_gateway(second) as b:
        yield a, b


async def use_from(
    http: aiohttp.ClientSession, gateway: RunningGateway, key: str, client: str
) -> None:
    headers = {**bearer(key), "X-Forwarded-For": client}
    async with http.get(gateway.proxy + "/v1/me", headers=headers) as r:
        assert r.status == 200


async def flush(*gateways: RunningGateway) -> None:
    """What every last-use flush does (every 30 s; the tests do not wait for it)."""
    for gateway in gateways:
        assert gateway.store.networks is not None
        await gateway.store.networks.flush(gateway.pool)


async def announced(gateway: RunningGateway, key_id: str) -> list[dict[str, Any]]:
    async with gateway.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT actor, details FROM audit_events"
            " WHERE action = 'key.new_network' AND key_id = $1::uuid ORDER BY id",
            key_id,
        )
    assert all(row["actor"] == "system" for row in rows)
    return [json.loads(row["details"]) for row in rows]


async def test_each_new_network_is_announced_once_across_hosts(
    two: tuple[RunningGateway, RunningGateway], http: aiohttp.ClientSession
) -> None:
    a, b = two
    async with http.post(
        a.admin + "/admin/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["key.new_network"]},
        headers=admin_headers(),
    ) as r:
        assert r.status == 201, await r.text()
    user = unique("net")
    key = await a.create_key(user, ["me:read"], name="laptop")
    for gateway, client in [(a, "203.0.113.7"), (a, "203.0.113.99"), (b, "203.0.113.200"),
                            (b, "2001:db8:85a3::8a2e:370:7334"), (a, "2001:db8:85a3:ff::1"),
                            (a, "198.51.100.1"), (b, "198.51.100.2")]:  # fmt: skip
        await use_from(http, gateway, key["key"], client)
    # Both hosts saw 203.0.113.0/24 and 198.51.100.0/24: each network is told once.
    assert {network for _, network in a.store.networks.pending} == {  # type: ignore[union-attr]
        "203.0.113.0/24", "2001:db8:85a3::/48", "198.51.100.0/24"
    }  # fmt: skip
    await flush(a, b)
    events = await announced(a, key["id"])
    assert sorted(event["network"] for event in events) == [
        "198.51.100.0/24", "2001:db8:85a3::/48", "203.0.113.0/24"
    ]  # fmt: skip
    async with a.pool.acquire() as conn:
        payloads = [
            json.loads(row["payload"])
            for row in await conn.fetch(
                "SELECT payload FROM webhook_events WHERE type = 'key.new_network'"
                " AND payload::jsonb -> 'data' ->> 'key_id' = $1",
                key["id"],
            )
        ]
    assert len(payloads) == 3
    data = next(p["data"] for p in payloads if p["data"]["network"] == "203.0.113.0/24")
    assert (data["user_id"], data["name"]) == (user, "laptop") and data["first_seen_at"]

    # Used again from known networks, through either host: nothing more is announced.
    await use_from(http, b, key["key"], "203.0.113.50")
    await use_from(http, a, key["key"], "198.51.100.77")
    await flush(a, b)
    assert len(await announced(a, key["id"])) == 3

    async with http.get(
        a.admin + f"/admin/v1/keys/{key['id']}/networks", headers=admin_headers()
    ) as r:
        listed = await r.json()
    assert r.status == 200
    assert {n["network"] for n in listed["networks"]} == {
        "203.0.113.0/24", "2001:db8:85a3::/48", "198.51.100.0/24"
    }  # fmt: skip
    assert all(n["first_seen_at"] <= n["last_seen_at"] for n in listed["networks"])


async def test_a_network_unseen_for_the_window_is_new_again(
    two: tuple[RunningGateway, RunningGateway], http: aiohttp.ClientSession
) -> None:
    a, b = two
    key = await a.create_key(unique("net"), ["me:read"])
    await use_from(http, a, key["key"], "192.0.2.10")
    await flush(a)
    async with a.pool.acquire() as conn:  # last seen 31 days ago, as far as anyone knows
        await conn.execute(
            "UPDATE key_networks SET last_seen_at = now() - interval '31 days',"
            " first_seen_at = now() - interval '40 days' WHERE key_id = $1::uuid",
            key["id"],
        )
    await use_from(http, b, key["key"], "192.0.2.11")
    await flush(b)
    events = await announced(a, key["id"])
    assert [event["network"] for event in events] == ["192.0.2.0/24", "192.0.2.0/24"]
    assert events[1]["first_seen_at"] > events[0]["first_seen_at"]


async def test_nothing_is_noted_with_the_notice_off(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    async with running_gateway(make_config(tmp_path, database_url, upstream.url)) as gateway:
        key = await gateway.create_key(unique("net"), ["me:read"])
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(key["key"])) as r:
            assert r.status == 200
        assert gateway.store.networks is None
