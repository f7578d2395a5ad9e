"""Rate limits (§13) through a real gateway with the local backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    routes_dir,
    running_gateway,
    unique,
)

POLICY = """\
rate_limits:
  per-key: {limit: 5, per_seconds: 60, by: key}
  per-user: {limit: 8, per_seconds: 60, by: user}
  guessing: {limit: 3, per_seconds: 60, by: ip}
upstream: core
routes:
  - {methods: [GET], path: /v1/me, scopes: [me:read], rate_limit: [per-key, per-user]}
  - {methods: [GET], path: /v1/guarded, scopes: [me:read], rate_limit: [guessing]}
  - {methods: [GET], path: '/v1/public/{rest...}', public: true, rate_limit: [guessing]}
  - {methods: [GET], path: /v1/free, scopes: [me:read]}
"""


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        routes_dir(tmp_path, POLICY),
        decisions={"enabled": True, "listen": {"port": 0}},
    )
    async with running_gateway(config) as running:
        yield running


async def test_per_key_limit_with_headers_and_429(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    key = await gateway.create_key(unique("ann"), ["me:read"])
    seen = []
    for _ in range(6):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(key["key"])) as r:
            seen.append((r.status, r.headers.get("RateLimit"), r.headers.get("Retry-After")))
            assert r.headers["RateLimit-Policy"] == '"per-key";q=5;w=60, "per-user";q=8;w=60'
    assert [status for status, _, _ in seen] == [200] * 5 + [429]
    assert seen[0][1] == '"per-key";r=4;t=12' and seen[4][1] == '"per-key";r=0;t=60'
    assert seen[5][1] == '"per-key";r=0;t=12' and seen[5][2] == "12"
    assert upstream.count("/v1/me") == 5  # the refused one was not forwarded
    async with http.get(gateway.proxy + "/v1/free", headers=bearer(key["key"])) as r:
        assert (
            r.status == 200 and "RateLimit" not in r.headers and "RateLimit-Policy" not in r.headers
        )
    async with http.get(gateway.admin + "/metrics") as r:
        assert 'gateway_rate_limited_total{limit="per-key"} 1.0' in await r.text()


async def test_a_users_keys_share_the_per_user_limit(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("bea")
    first = await gateway.create_key(user, ["me:read"])
    second = await gateway.create_key(user, ["me:read"])
    statuses = []
    for key in [first, second] * 5:
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(key["key"])) as r:
            statuses.append(r.status)
    assert statuses.count(200) == 8 and statuses[-2:] == [429, 429]


async def test_an_actor_token_counts_against_its_parent_key(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("cid"), ["me:read", "actor_tokens:create"])
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=bearer(key["key"])) as r:
        token = (await r.json())["access_token"]
    statuses = []
    for credential in [key["key"], token] * 3:
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(credential)) as r:
            statuses.append(r.status)
    assert statuses == [200] * 5 + [429]


async def test_by_ip_is_checked_before_authentication(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    """A guessing limit: wrong keys use up the address's quota, then even a good key waits."""
    good = await gateway.create_key(unique("dee"), ["me:read"])
    statuses = []
    for credential in ["gwk_wrong", "gwk_wrong", "gwk_wrong", good["key"]]:
        async with http.get(gateway.proxy + "/v1/guarded", headers=bearer(credential)) as r:
            statuses.append(r.status)
            assert r.headers["RateLimit-Policy"] == '"guessing";q=3;w=60'  # on 401s too
    assert statuses == [401, 401, 401, 429]
    assert upstream.count("/v1/guarded") == 0


async def test_a_public_route_with_an_address_limit(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    statuses = []
    for _ in range(4):
        async with http.get(gateway.proxy + "/v1/public/status") as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 200, 429]


async def test_decision_endpoints_answer_the_same_limits(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    host, port = gateway.decisions_address
    key = await gateway.create_key(unique("eli"), ["me:read"])
    headers = {**bearer(key["key"]), "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/me",
               "X-Forwarded-For": "198.51.100.9"}  # fmt: skip
    answers = []
    for _ in range(6):
        async with http.get(f"http://{host}:{port}/decisions/forward-auth", headers=headers) as r:
            answers.append((r.status, r.headers.get("RateLimit"), r.headers.get("Retry-After")))
    assert [status for status, _, _ in answers] == [200] * 5 + [429]
    assert answers[5][2] == "12" and answers[0][1] == '"per-key";r=4;t=12'
    nginx = {**bearer(key["key"]), "X-Original-Method": "GET", "X-Original-URI": "/v1/me"}
    async with http.get(f"http://{host}:{port}/decisions/auth-request", headers=nginx) as r:
        assert r.status == 403
        assert r.headers["X-Gateway-Deny-Status"] == "429" and r.headers["Retry-After"] == "12"
