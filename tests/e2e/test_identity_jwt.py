"""Signed identity to upstreams (§15) through a real gateway, verified the way an upstream
would: against the gateway's published JWKS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from gateway.keys.principal import Principal
from gateway.tokens.identity import IdentityTokens
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
upstream: core
identity: jwt
routes:
  - {methods: [GET], path: /v1/signed, scopes: [me:read]}
  - {methods: [GET], path: /v1/both, scopes: [me:read], identity: both}
  - {methods: [GET], path: /v1/plain, scopes: [me:read], identity: headers}
  - {methods: [GET], path: '/v1/public/{rest...}', public: true}
"""
IDENTITY_HEADERS = ("X-Gateway-User-Id", "X-Gateway-Key-Id", "X-Gateway-Scopes", "X-Gateway-Auth")


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    config = make_config(tmp_path, database_url, upstream.url, routes_dir(tmp_path, POLICY))
    async with running_gateway(config) as running:
        yield running


async def verify(
    http: aiohttp.ClientSession, gateway: RunningGateway, token: str
) -> dict[str, Any]:
    """What an upstream does: the key by `kid` from the JWKS, then the usual checks."""
    async with http.get(gateway.proxy + "/.well-known/jwks.json") as r:
        keys = jwt.PyJWKSet.from_dict(await r.json())
    header = jwt.get_unverified_header(token)
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    assert header["typ"] == "JWT"
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=[header["alg"]], audience="core", issuer="gateway"
    )
    return claims


async def test_jwt_mode_sends_a_verifiable_assertion_and_no_identity_headers(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    user = unique("ida")
    key = await gateway.create_key(user, ["me:read", "projects:read"])
    forged = {"X-Gateway-Identity": "eyJhbGciOiJub25lIn0.e30.", "X-Gateway-User-Id": "admin"}
    async with http.get(
        gateway.proxy + "/v1/signed", headers={**bearer(key["key"]), **forged}
    ) as r:
        assert r.status == 200
    seen = upstream.received[-1].headers
    assert not [name for name in IDENTITY_HEADERS if name in seen]
    token = seen["X-Gateway-Identity"]
    assert token != forged["X-Gateway-Identity"]
    claims = await verify(http, gateway, token)
    assert claims["sub"] == user and claims["key_id"] == key["id"] and claims["auth"] == "api_key"
    assert claims["scope"] == "me:read projects:read" and claims["exp"] - claims["iat"] == 60


async def test_both_and_headers_modes(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    key = await gateway.create_key(unique("bo"), ["me:read"])
    spoof = {"X-Gateway-Identity": "forged"}
    async with http.get(gateway.proxy + "/v1/both", headers={**bearer(key["key"]), **spoof}) as r:
        assert r.status == 200
    both = upstream.received[-1].headers
    assert all(name in both for name in IDENTITY_HEADERS)
    assert (await verify(http, gateway, both["X-Gateway-Identity"]))["key_id"] == key["id"]
    async with http.get(gateway.proxy + "/v1/plain", headers={**bearer(key["key"]), **spoof}) as r:
        assert r.status == 200
    plain = upstream.received[-1].headers
    assert "X-Gateway-Identity" not in plain and plain["X-Gateway-Key-Id"] == key["id"]
    async with http.get(gateway.proxy + "/v1/public/x", headers=spoof) as r:
        assert r.status == 200
    assert "X-Gateway-Identity" not in upstream.received[-1].headers


async def test_a_hot_key_is_signed_once_and_an_actor_token_gets_its_own(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    tokens = gateway.runtime.identity_tokens
    key = await gateway.create_key(unique("hot"), ["me:read", "actor_tokens:create"])
    before = tokens.signed
    for _ in range(50):
        async with http.get(gateway.proxy + "/v1/signed", headers=bearer(key["key"])) as r:
            assert r.status == 200
    assert tokens.signed - before == 1
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=bearer(key["key"]),
                         json={"scopes": ["me:read"]}) as r:  # fmt: skip
        actor = (await r.json())["access_token"]
    async with http.get(gateway.proxy + "/v1/signed", headers=bearer(actor)) as r:
        assert r.status == 200
    claims = await verify(http, gateway, upstream.received[-1].headers["X-Gateway-Identity"])
    assert claims["auth"] == "actor_token" and claims["scope"] == "me:read"
    assert tokens.signed - before == 2


def test_re_signed_only_when_under_thirty_seconds_remain(
    gateway_signer: tuple[IdentityTokens, list[float]],
) -> None:
    tokens, clock = gateway_signer
    principal = Principal("u", "k", frozenset({"me:read"}), "api_key", "me:read")
    first = tokens.token(principal, "core")
    clock[0] += 29
    assert tokens.token(principal, "core") == first and tokens.signed == 1
    clock[0] += 2  # 29 s left of 60
    assert tokens.token(principal, "core") != first and tokens.signed == 2
    assert tokens.token(principal, "billing") != first and tokens.signed == 3  # per upstream


@pytest.fixture
def gateway_signer(tmp_path: Path) -> tuple[IdentityTokens, list[float]]:
    from gateway.foundation.config import Tokens
    from gateway.tokens.actor import Signer
    from gateway.tokens.signing import dev_key

    clock = [1_800_000_000.0]
    signer = Signer([dev_key(tmp_path)], Tokens())
    return IdentityTokens(signer, "gateway", clock=lambda: clock[0]), clock


async def test_an_unknown_identity_mode_is_a_load_error(tmp_path: Path) -> None:
    from gateway.foundation.config import Config
    from gateway.policy.loader import PolicyError, load_dir
    from gateway.policy.scopes import Catalogue

    directory = routes_dir(tmp_path, POLICY.replace("identity: both", "identity: saml"))
    catalogue = Catalogue({name: d.implies for name, d in Config().scopes.items()})
    with pytest.raises(PolicyError) as caught:
        load_dir(directory, catalogue, frozenset({"core"}))
    assert "routes.yaml:5: identity must be one of headers, jwt, both" in json.dumps(
        caught.value.problems
    )
