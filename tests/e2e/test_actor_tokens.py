"""Actor tokens end to end: minted over HTTP, verified by PyJWT against the served JWKS."""

from __future__ import annotations

import json

import aiohttp
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.events import Actor
from gateway.keys import management
from tests.support import RecordingUpstream, RunningGateway, bearer, unique

MINT = "/auth/actor-tokens"


async def _minter(gateway: RunningGateway, scopes: list[str]) -> dict[str, str]:
    user = unique("user")
    await gateway.member(user, "organization", "acme")
    return await gateway.create_key(user, ["actor_tokens:create", *scopes])


async def test_minted_token_verifies_against_jwks_and_carries_every_claim(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await _minter(gateway, ["projects:write", "me:read"])
    async with http.post(gateway.proxy + MINT, headers=bearer(key["key"])) as response:
        assert response.status == 201
        assert response.headers["Cache-Control"] == "no-store"
        minted = await response.json()
    assert minted["token_type"] == "Bearer"
    assert minted["expires_in"] == 300
    assert minted["scope"] == "me:read projects:read projects:write"
    async with http.get(gateway.proxy + "/.well-known/jwks.json") as response:
        assert response.status == 200
        assert "max-age" in response.headers["Cache-Control"]
        jwks = await response.json()
    header = jwt.get_unverified_header(minted["access_token"])
    assert header["typ"] == "JWT" and header["alg"] == "EdDSA"
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        minted["access_token"], public, algorithms=["EdDSA"], audience="gateway", issuer="gateway"
    )
    assert claims["sub"] == key["user_id"]
    assert claims["act"] == {"sub": f"api_key:{key['id']}"}
    assert claims["exp"] - claims["iat"] == 300
    assert "actor_tokens:create" not in claims["scope"]
    assert set(claims) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "scope", "act"}


async def test_token_works_on_a_proxied_route_with_its_own_scopes(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _minter(gateway, ["projects:write"])
    body = {"scopes": ["projects:read"], "ttl_seconds": 60.0}  # JSON Schema's integer admits 60.0
    async with http.post(gateway.proxy + MINT, json=body, headers=bearer(key["key"])) as response:
        token = (await response.json())["access_token"]
    async with http.get(
        gateway.proxy + "/v1/organizations/acme/projects", headers=bearer(token)
    ) as response:
        assert response.status == 200
    seen = upstream.received[-1].headers
    assert seen["X-Gateway-Auth"] == "actor_token"
    assert seen["X-Gateway-Scopes"] == "projects:read"
    assert seen["X-Gateway-Key-Id"] == key["id"]
    assert "Authorization" not in seen
    async with http.post(
        gateway.proxy + "/v1/organizations/acme/projects", headers=bearer(token)
    ) as response:
        assert response.status == 403  # projects:write was not granted to the token
    async with http.post(gateway.proxy + MINT, headers=bearer(token)) as response:
        assert response.status == 403  # an actor token cannot mint


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"scopes": ["projects:admin"]}, 403),
        ({"scopes": ["actor_tokens:create"]}, 403),
        ({"ttl_seconds": 901}, 422),
        ({"ttl_seconds": "5"}, 422),
        ({"scopes": "me:read"}, 422),
        ({"colour": 1}, 422),
    ],
)
async def test_mint_refusals(
    gateway: RunningGateway, http: aiohttp.ClientSession, body: dict[str, object], status: int
) -> None:
    key = await _minter(gateway, ["projects:read"])
    async with http.post(gateway.proxy + MINT, json=body, headers=bearer(key["key"])) as response:
        assert response.status == status
        problem = await response.json(content_type=None)
    if status == 422:
        assert problem["errors"] and {"field", "message"} <= set(problem["errors"][0])


async def test_mint_needs_the_scope_and_valid_json(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    plain = await gateway.create_key(unique("user"), ["me:read"])
    async with http.post(gateway.proxy + MINT, headers=bearer(plain["key"])) as response:
        assert response.status == 403
    key = await _minter(gateway, [])
    for raw in (b"{not json", b"[1, 2]"):
        async with http.post(gateway.proxy + MINT, data=raw, headers=bearer(key["key"])) as r:
            assert r.status == 400
    async with http.post(gateway.proxy + MINT) as response:
        assert response.status == 401


async def test_revoking_the_parent_key_kills_its_tokens(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _minter(gateway, ["me:read"])
    async with http.post(gateway.proxy + MINT, headers=bearer(key["key"])) as response:
        token = (await response.json())["access_token"]
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(token)) as response:
        assert response.status == 200
    async with gateway.pool.acquire() as conn:
        await management.revoke_key(conn, key["id"], actor=Actor("admin"))
    for _ in range(40):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(token)) as response:
            if response.status == 401:
                assert "revoked" in (await response.json(content_type=None))["detail"]
                break
        await __import__("asyncio").sleep(0.025)
    else:
        pytest.fail("token still accepted 1 s after its key was revoked")
    # Revocation travels by NOTIFY (within 1 s, not before revoke_key returns); once
    # it has arrived, nothing more reaches the upstream.
    forwarded = len(upstream.received)
    for _ in range(5):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(token)) as response:
            assert response.status == 401
    assert len(upstream.received) == forwarded


async def test_forged_tokens_are_401_and_not_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _minter(gateway, ["me:read"])
    async with http.post(gateway.proxy + MINT, headers=bearer(key["key"])) as response:
        token = (await response.json())["access_token"]
    head, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["scope"] = "me:read projects:admin"
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    none_head = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT","kid":"dev"}').decode()
    for forged in (f"{head}.{forged_payload}.{signature}", f"{none_head}.{payload}."):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(forged)) as response:
            assert response.status == 401
            assert "invalid" in (await response.json(content_type=None))["detail"]
    assert upstream.received == []


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requested=st.lists(
        st.sampled_from(["me:read", "projects:read", "projects:write", "projects:admin"]),
        max_size=4,
    )
)
async def test_no_minted_token_carries_a_scope_its_key_lacks(
    gateway: RunningGateway, http: aiohttp.ClientSession, requested: list[str]
) -> None:
    key = await _minter(gateway, ["projects:write"])
    held = {"projects:write", "projects:read"}
    async with http.post(
        gateway.proxy + MINT, json={"scopes": requested}, headers=bearer(key["key"])
    ) as response:
        if set(requested) <= held:
            assert response.status == 201
            scope = (await response.json())["scope"]
            assert set(scope.split()) <= held
        else:
            assert response.status == 403
