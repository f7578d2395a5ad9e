"""The key policy's maximum lifetime (§21): new keys refused beyond it through the admin
API, the self-service API, the CLI and rotation; keys made before it blocked, not
revoked, and working again when the limit is raised."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_key_controls import _cli
from tests.e2e.test_selfservice_api import Person
from tests.hostapp import HostIdentity, host
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    admin_headers,
    bearer,
    cli_config,
    make_config,
    running_gateway,
    unique,
)

__all__ = ["host"]  # a fixture
SLUG = "key-lifetime-exceeds-policy"


@asynccontextmanager
async def gateway_with(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, limit: int | None, **extra: Any
) -> AsyncIterator[RunningGateway]:
    config = make_config(
        tmp_path, database_url, upstream.url, key_policy={"max_lifetime_days": limit}, **extra
    )
    async with running_gateway(config) as running:
        yield running


async def admin(
    http: aiohttp.ClientSession, gateway: RunningGateway, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, gateway.admin + path, json=body, headers=admin_headers()) as r:
        return r.status, await r.json(content_type=None)


async def status_of(http: aiohttp.ClientSession, gateway: RunningGateway, key: str) -> int:
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(key)) as r:
        return r.status


async def test_the_admin_api_refuses_keys_longer_than_the_limit(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    async with gateway_with(tmp_path, database_url, upstream, 30) as gateway:
        body: dict[str, Any] = {"user_id": unique("pol"), "name": "k", "scopes": ["me:read"]}
        for expiry in ({}, {"expires_in_days": 31}, {"expires_at": "2099-01-01T00:00:00Z"}):
            status, problem = await admin(http, gateway, "POST", "/admin/v1/keys",
                                          {**body, **expiry})  # fmt: skip
            assert status == 422 and problem["type"].endswith(SLUG), problem
            assert problem["max_lifetime_days"] == 30 and "30 days" in problem["detail"]
        status, key = await admin(http, gateway, "POST", "/admin/v1/keys",
                                  {**body, "expires_in_days": 30})  # fmt: skip
        assert status == 201 and key["status"] == "active"
        assert await status_of(http, gateway, key["key"]) == 200
        # A rotation keeps the expiry: within the limit it is accepted, a longer one is not.
        rotate = f"/admin/v1/keys/{key['id']}/rotate"
        status, problem = await admin(http, gateway, "POST", rotate, {"expires_in_days": 45})
        assert status == 422 and problem["type"].endswith(SLUG)
        status, rotated = await admin(http, gateway, "POST", rotate, {})
        assert status == 201 and rotated["expires_at"] == key["expires_at"]


async def test_a_key_over_a_later_limit_is_blocked_not_revoked(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("pol")
    async with gateway_with(tmp_path, database_url, upstream, None) as before:
        forever = await before.create_key(user, ["me:read"], name="forever")
        sixty = await before.create_key(user, ["me:read"], name="sixty", expires_in_days=60)
        ten = await before.create_key(user, ["me:read"], name="ten", expires_in_days=10)
    async with gateway_with(tmp_path, database_url, upstream, 30) as strict:
        async with http.get(strict.proxy + "/v1/me", headers=bearer(forever["key"])) as r:
            problem = await r.json(content_type=None)
            assert r.status == 401 and problem["type"].endswith(SLUG)
            assert "create a new key" in problem["detail"]
        assert await status_of(http, strict, sixty["key"]) == 401
        assert await status_of(http, strict, ten["key"]) == 200
        status, listed = await admin(http, strict, "GET", f"/admin/v1/keys?user_id={user}")
        assert status == 200
        statuses = {key["name"]: key["status"] for key in listed["keys"]}
        assert statuses == {"forever": "blocked", "sixty": "blocked", "ten": "active"}
        # Logged with the policy as the reason, as every refusal is.
        await asyncio.sleep(0.2)  # the access log is written in batches
        log = [line for line in strict.log_lines() if line.get("path") == "/v1/me"]
        assert (log[0]["status"], log[0]["reason"]) == (401, SLUG)
    async with gateway_with(tmp_path, database_url, upstream, 90) as raised:
        assert await status_of(http, raised, sixty["key"]) == 200  # never revoked
        assert await status_of(http, raised, forever["key"]) == 401


async def test_the_page_offers_only_expiries_within_it(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    host: HostIdentity,
) -> None:
    self_service = {**host.session_config(), "expiry_days": {"allow_never": True}}
    async with gateway_with(
        tmp_path, database_url, upstream, 45, self_service=self_service
    ) as gateway:
        person = Person(http, gateway, host.token(unique("pat")))
        status, session, _ = await person.call("GET", "/session")
        assert status == 200
        assert session["expiry_days"] == {"presets": [7, 30], "default": 30, "max": 45,
                                          "allow_never": False, "policy_max": 45}  # fmt: skip
        for expiry in ({"never": True}, {"expires_in_days": 60}):
            status, problem, _ = await person.call(
                "POST", "/keys", {"name": "n", "scopes": ["me:read"], **expiry}
            )
            assert status == 422 and problem["type"].endswith(SLUG), problem
        status, key, _ = await person.call("POST", "/keys", {"name": "n", "scopes": ["me:read"]})
        assert status == 201 and key["status"] == "active"


async def test_the_cli_refuses_too_and_rotates_within_the_limit(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    async with gateway_with(tmp_path, database_url, upstream, 30) as gateway:
        config = cli_config(tmp_path, gateway.config, "key_policy: {max_lifetime_days: 30}\n")
        flags = ["keys", "create", "--user", unique("pol"), "--name", "k", "--scope", "me:read"]
        refused = await asyncio.to_thread(_cli, *flags, config=config)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"gateway: {SLUG}: keys must expire within 30 days")
        made = await asyncio.to_thread(_cli, *flags, "--expires-in-days", "7", "--json",
                                       config=config)  # fmt: skip
        assert made.returncode == 0, made.stderr
        key_id = made.stdout.split('"id":"')[1].split('"')[0]
        longer = await asyncio.to_thread(
            _cli, "keys", "rotate", key_id, "--expires-in-days", "31", config=config
        )
        assert longer.returncode == 1 and SLUG in longer.stderr


@pytest.mark.parametrize("limit", [0, 36501])
def test_a_limit_out_of_range_is_a_load_error(tmp_path: Path, limit: int) -> None:
    from gateway.foundation.config import ConfigError, load

    path = tmp_path / "gateway.yaml"
    path.write_text(f"key_policy: {{max_lifetime_days: {limit}}}\n")
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert "key_policy.max_lifetime_days: must be from 1 to 36500" in str(caught.value)
