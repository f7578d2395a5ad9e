"""Key controls (§16, first part): disable/enable, allowed networks with the client-address
rule, and X-Key-Expires-At — through the admin API, the CLI, the proxy and decisions."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.e2e.test_audit import admin, events
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
    "  - {name: me, methods: [GET], path: /v1/me, scopes: [me:read]}\n"
    "  - {name: projects, methods: [GET], path: /v1/projects, scopes: [projects:read]}\n"
    "  - {name: guarded, methods: [GET], path: '/guarded/{n}', public: true,"
    " rate_limit: [per-ip]}\n"
    "  - {name: limited, methods: [GET], path: '/limited/{n}', scopes: [me:read],"
    " rate_limit: [per-key]}\n"
    "rate_limits:\n"
    "  per-ip: {limit: 1, per_seconds: 60, by: ip}\n"
    "  per-key: {limit: 2, per_seconds: 60, by: key}\n"
)


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    async with gateway_with_routes(
        tmp_path,
        database_url,
        upstream.url,
        ROUTES,
        decisions={"enabled": True, "listen": {"host": "127.0.0.1", "port": 0}},
        trusted_proxies=["127.0.0.1/32"],
    ) as running:
        yield running


async def _new_key(
    http: aiohttp.ClientSession, gateway: RunningGateway, scopes: list[str], **extra: Any
) -> dict[str, Any]:
    body = {"user_id": unique("ctl"), "name": "ctl", "scopes": scopes, **extra}
    status, key, _ = await admin(http, gateway, "POST", "/admin/v1/keys", body)
    assert status == 201, key
    return dict(key)


async def _get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with http.get(url, headers=headers) as response:
        body = await response.json(content_type=None) if response.content_length else {}
        return response.status, body, response.headers


async def _until(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], status: int
) -> tuple[float, dict[str, Any]]:
    """Seconds until `url` answers `status` (polled every 25 ms, at most 2 s)."""
    started = asyncio.get_running_loop().time()
    while True:
        got, body, _ = await _get(http, url, headers)
        elapsed = asyncio.get_running_loop().time() - started
        if got == status:
            return elapsed, body
        assert elapsed < 2, f"still {got} after {elapsed:.2f} s"
        await asyncio.sleep(0.025)


async def test_disable_and_enable_take_effect_within_a_second_and_are_audited(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _new_key(http, gateway, ["me:read", "actor_tokens:create"])
    url, auth = gateway.proxy + "/v1/me", bearer(key["key"])
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=auth) as response:
        token = (await response.json())["access_token"]
    assert (await _get(http, url, auth))[0] == 200
    status, changed, _ = await admin(
        http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"enabled": False}
    )
    assert status == 200 and changed["enabled"] is False and changed["status"] == "active"
    took, body = await _until(http, url, auth, 401)
    assert took < 1 and body["type"].endswith("key-disabled") and "disabled" in body["detail"]
    # Its actor tokens too; and a missing scope on a disabled key is still a 401 (§16 order).
    assert (await _get(http, url, bearer(token)))[0] == 401
    assert (await _get(http, gateway.proxy + "/v1/projects", auth))[0] == 401
    forwarded = len(upstream.received)
    await admin(http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"enabled": True})
    took, _ = await _until(http, url, auth, 200)
    assert took < 1 and (await _get(http, url, bearer(token)))[0] == 200
    assert len(upstream.received) == forwarded + 2
    found = await events(http, gateway, key_id=key["id"])
    assert [e["action"] for e in found][:2] == ["key.enabled", "key.disabled"]
    assert found[1]["details"] == {"name": "ctl", "enabled": False}
    # Setting what is already set changes nothing and records nothing.
    await admin(http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"enabled": True})
    assert len(await events(http, gateway, key_id=key["id"])) == len(found)


async def test_allowed_networks_use_the_client_address_behind_a_trusted_proxy(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _new_key(
        http, gateway, ["me:read", "actor_tokens:create"], allowed_cidrs=["203.0.113.0/24"]
    )
    assert key["allowed_cidrs"] == ["203.0.113.0/24"]
    url, auth = gateway.proxy + "/v1/me", bearer(key["key"])
    # The peer (127.0.0.1) is trusted: the rightmost untrusted X-Forwarded-For hop counts.
    inside = {**auth, "X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    outside = {**auth, "X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    status, body, _ = await _get(http, url, outside)
    assert status == 403 and body["type"].endswith("address-not-allowed")
    assert upstream.received == []
    assert (await _get(http, url, {**inside, "X-Forwarded-Proto": "https"}))[0] == 200
    assert upstream.received[0].headers["X-Forwarded-For"] == "203.0.113.9"
    # The trusted proxy ended the client's TLS: the upstream is told so.
    assert upstream.received[0].headers.getall("X-Forwarded-Proto") == ["https"]
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=outside) as response:
        assert response.status == 403  # minting is refused from elsewhere too
    await asyncio.sleep(0.15)  # the access log is written in batches every 50 ms
    lines = [line for line in gateway.log_lines() if line["route"] == "me"]
    assert [line["client"] for line in lines] == ["198.51.100.7", "203.0.113.9"]
    # IPv6, set by PATCH, on every process within a second.
    await admin(http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}",
                {"allowed_cidrs": ["2001:db8::/32"]})  # fmt: skip
    took, _ = await _until(http, url, {**auth, "X-Forwarded-For": "2001:db8::5"}, 200)
    assert took < 1
    assert (await _get(http, url, inside))[0] == 403


async def test_by_ip_limits_count_the_client_behind_a_trusted_proxy(
    gateway: RunningGateway,
) -> None:
    async with aiohttp.ClientSession() as http:
        url = gateway.proxy + "/guarded/1"
        one, other = {"X-Forwarded-For": "198.51.100.1"}, {"X-Forwarded-For": "198.51.100.2"}
        assert (await _get(http, url, one))[0] == 200
        assert (await _get(http, url, one))[0] == 429
        assert (await _get(http, url, other))[0] == 200


async def test_expiry_ahead_is_told_on_responses_and_decisions(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    expiring = await _new_key(http, gateway, ["me:read"], expires_at="2031-01-02T03:04:05+02:00")
    forever = await _new_key(http, gateway, ["me:read"])
    _, _, headers = await _get(http, gateway.proxy + "/v1/me", bearer(expiring["key"]))
    assert headers["X-Key-Expires-At"] == "2031-01-02T01:04:05Z"
    _, _, headers = await _get(http, gateway.proxy + "/v1/me", bearer(forever["key"]))
    assert "X-Key-Expires-At" not in headers
    host, port = gateway.decisions_address
    asked = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/me", **bearer(expiring["key"])}
    status, _, headers = await _get(http, f"http://{host}:{port}/decisions/forward-auth", asked)
    assert status == 200 and headers["X-Key-Expires-At"] == "2031-01-02T01:04:05Z"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"allowed_cidrs": ["10.0.0.1/8"]}, "allowed_cidrs[0]"),
        ({"allowed_cidrs": ["nonsense"]}, "allowed_cidrs[0]"),
        ({"allowed_cidrs": "10.0.0.0/8"}, "allowed_cidrs"),
        ({"enabled": "no"}, "enabled"),
        ({"owner": "x"}, "owner"),
    ],
)
async def test_bad_changes_are_422_naming_the_field_and_change_nothing(
    gateway: RunningGateway, http: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    key = await _new_key(http, gateway, ["me:read"])
    status, body, _ = await admin(http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}",
                                  {"enabled": False, **change})  # fmt: skip
    assert status == 422 and field in [e["field"] for e in body["errors"]]
    _, now, _ = await admin(http, gateway, "GET", f"/admin/v1/keys/{key['id']}")
    assert now["enabled"] is True and now["allowed_cidrs"] == []
    status, _, _ = await admin(http, gateway, "PATCH", f"/admin/v1/keys/{unique('x')}", {})
    assert status == 404


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", *args, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


async def test_the_cli_switches_a_key_and_pins_it(
    tmp_path: Path, database_url: str, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await _new_key(http, gateway, ["me:read"])
    config = cli_config(tmp_path, gateway.config)
    done = await asyncio.to_thread(
        _cli, "keys", "update", key["id"], "--disable", "--cidr", "10.0.0.0/8", "--cidr",
        "2001:db8::/32", "--json", config=config,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["enabled"] is False and shown["allowed_cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]
    found = await events(http, gateway, key_id=key["id"])
    assert (found[0]["actor"], found[0]["action"]) == ("cli", "key.disabled")
    bad = await asyncio.to_thread(_cli, "keys", "update", key["id"], "--cidr", "10.0.0.1/8",
                                  config=config)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--cidr" in bad.stderr
    again = await asyncio.to_thread(_cli, "keys", "update", key["id"], "--enable",
                                    "--any-address", config=config)  # fmt: skip
    assert again.returncode == 0 and "disabled" not in again.stdout and "from=" not in again.stdout
    limited = await asyncio.to_thread(_cli, "keys", "update", key["id"], "--limit",
                                      "per-key=5/60:8", "--json", config=config)  # fmt: skip
    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout)["rate_limits"] == {
        "per-key": {"limit": 5, "per_seconds": 60.0, "burst": 8}
    }
    for wrong in ("per-key=5", "nope=5/60"):
        bad = await asyncio.to_thread(_cli, "keys", "update", key["id"], "--limit", wrong,
                                      config=config)  # fmt: skip
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--limit" in bad.stderr


async def test_a_key_s_own_numbers_replace_a_by_key_limit_for_that_key_only(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    plain = await _new_key(http, gateway, ["me:read"])
    bigger = await _new_key(
        http, gateway, ["me:read"], rate_limits={"per-key": {"limit": 5, "per_seconds": 60}}
    )
    assert bigger["rate_limits"] == {"per-key": {"limit": 5, "per_seconds": 60.0, "burst": 5}}
    url = gateway.proxy + "/limited/1"

    async def statuses(key: dict[str, Any], count: int) -> list[int]:
        return [(await _get(http, url, bearer(key["key"])))[0] for _ in range(count)]

    assert await statuses(plain, 3) == [200, 200, 429]
    assert await statuses(bigger, 6) == [200] * 5 + [429]
    _, _, headers = await _get(http, url, bearer(bigger["key"]))
    assert headers["RateLimit-Policy"] == '"per-key";q=5;w=60'
    # Changed later: on every process within a second, with a counter of its own.
    await admin(http, gateway, "PATCH", f"/admin/v1/keys/{plain['id']}",
                {"rate_limits": {"per-key": {"limit": 10, "per_seconds": 60, "burst": 3}}})  # fmt: skip
    took, _ = await _until(http, url, bearer(plain["key"]), 200)
    assert took < 1
    for bad, field in (("nope", "rate_limits.nope"), ("per-ip", "rate_limits.per-ip")):
        status, body, _ = await admin(http, gateway, "PATCH", f"/admin/v1/keys/{plain['id']}",
                                      {"rate_limits": {bad: {"limit": 1, "per_seconds": 1}}})  # fmt: skip
        assert status == 422 and [e["field"] for e in body["errors"]] == [field]
    status, body, _ = await admin(http, gateway, "PATCH", f"/admin/v1/keys/{plain['id']}",
                                  {"rate_limits": {"per-key": {"limit": 0, "per_seconds": 1}}})  # fmt: skip
    assert status == 422 and [e["field"] for e in body["errors"]] == ["rate_limits.per-key.limit"]


async def test_the_address_of_the_last_use_is_listed_beside_its_time(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """§21: `last_used_address`, the client address after `trusted_proxies` (here the
    test client is a trusted proxy), written in the batch with `last_used_at`."""
    key = await _new_key(http, gateway, ["me:read", "actor_tokens:create"])
    assert key["last_used_address"] is None and key["last_used_at"] is None
    forwarded = {**bearer(key["key"]), "X-Forwarded-For": "198.51.100.23, 203.0.113.9"}
    assert (await _get(http, gateway.proxy + "/v1/me", forwarded))[0] == 200
    assert await gateway.store.flush_last_used() == 1
    status, listed, _ = await admin(http, gateway, "GET", f"/admin/v1/keys/{key['id']}")
    assert status == 200 and listed["last_used_address"] == "203.0.113.9"
    first_use = listed["last_used_at"]
    # Through an actor token minted from it, from another address: the parent's use.
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=bearer(key["key"])) as r:
        token = (await r.json())["access_token"]
    await asyncio.sleep(0.01)
    via_token = {**bearer(token), "X-Forwarded-For": "2001:db8::7"}
    assert (await _get(http, gateway.proxy + "/v1/me", via_token))[0] == 200
    assert await gateway.store.flush_last_used() == 1  # one row, however many uses
    _, listed, _ = await admin(http, gateway, "GET", f"/admin/v1/keys/{key['id']}")
    assert listed["last_used_address"] == "2001:db8::7" and listed["last_used_at"] > first_use
    status, page, _ = await admin(http, gateway, "GET", f"/admin/v1/keys?user_id={key['user_id']}")
    assert [k["last_used_address"] for k in page["keys"]] == ["2001:db8::7"]
