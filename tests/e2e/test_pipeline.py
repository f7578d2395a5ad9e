"""The pipeline end to end: real PostgreSQL, real gateway, real upstream on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support import RecordingUpstream, RunningGateway, bearer, unique


async def test_valid_key_is_forwarded_with_identity_and_without_credential(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    key = await gateway.create_key(user, ["me:read", "projects:write"])
    async with http.get(
        gateway.proxy + "/v1/me?x=1",
        # X-Forwarded-Proto from a client that is no trusted proxy is not believed.
        headers={
            **bearer(key["key"]),
            "X-Gateway-User-Id": "admin",
            "X-Request-Id": "req-123",
            "X-Forwarded-Proto": "https",
        },
    ) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "req-123"
    [seen] = upstream.received
    assert seen.raw_path == "/v1/me?x=1"
    assert "Authorization" not in seen.headers
    assert seen.headers["X-Gateway-User-Id"] == user
    assert seen.headers.getall("X-Gateway-User-Id") == [user]
    assert seen.headers["X-Gateway-Key-Id"] == key["id"]
    assert seen.headers["X-Gateway-Auth"] == "api_key"
    assert seen.headers["X-Gateway-Scopes"] == "me:read projects:read projects:write"
    assert seen.headers["X-Request-Id"] == "req-123"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers.getall("X-Forwarded-Proto") == ["http"]


async def test_x_api_key_header_works_and_is_stripped(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("user"), ["me:read"])
    async with http.get(gateway.proxy + "/v1/me", headers={"X-API-Key": key["key"]}) as response:
        assert response.status == 200
    assert "X-API-Key" not in upstream.received[0].headers


@pytest.mark.parametrize(
    ("headers", "word"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, "malformed"),
        ({"Authorization": "Bearer gwk_short"}, "malformed"),
        ({"X-API-Key": "gwk_" + "A" * 38}, "malformed"),
    ],
)
async def test_bad_credentials_are_401_and_not_forwarded(
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    word: str,
) -> None:
    async with http.get(gateway.proxy + "/v1/me", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content_type == "application/problem+json"
        problem = await response.json(content_type=None)
    assert word in problem["detail"]
    assert set(problem) >= {"type", "title", "status", "detail", "request_id"}
    assert upstream.received == []


async def test_unknown_expired_and_revoked_keys_are_401(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    from gateway.audit.events import Actor
    from gateway.keys import format as keyformat
    from gateway.keys import management

    unknown = keyformat.generate("gwk")
    revoked = await gateway.create_key(unique("user"), ["me:read"])
    async with gateway.pool.acquire() as conn:
        await management.revoke_key(conn, revoked["id"], actor=Actor("admin"))
        expired = await gateway.create_key(unique("user"), ["me:read"])
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
            expired["id"],
        )
    for token, word in (
        (unknown, "unknown"),
        (revoked["key"], "revoked"),
        (expired["key"], "expired"),
    ):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(token)) as response:
            assert response.status == 401
            body = await response.text()
            assert word in body
            assert token not in body
    assert upstream.received == []


async def test_missing_scope_is_403_listing_the_scopes(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("user"), ["projects:read"])
    async with http.delete(
        gateway.proxy + "/v1/projects/p1", headers=bearer(key["key"])
    ) as response:
        assert response.status == 403
        assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
        problem = await response.json(content_type=None)
    assert problem["missing_scopes"] == ["projects:admin"]
    assert "projects:admin" in problem["detail"]
    assert upstream.received == []


async def test_implied_scopes_pass(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    await gateway.member(user, "project", "p-7")
    key = await gateway.create_key(user, ["projects:admin"])
    async with http.get(gateway.proxy + "/v1/projects/p-7", headers=bearer(key["key"])) as response:
        assert response.status == 200
    assert upstream.count("/v1/projects/p-7") == 1


async def test_no_route_is_404_default_deny(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("user"), ["me:read"])
    for method, path in (("GET", "/v2/unknown"), ("POST", "/v1/me"), ("GET", "/v1/me/")):
        async with http.request(
            method, gateway.proxy + path, headers=bearer(key["key"])
        ) as response:
            assert response.status == 404, (method, path)
            assert response.content_type == "application/problem+json"
    assert upstream.received == []


async def test_public_route_needs_no_credential_and_strips_any(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        gateway.proxy + "/v1/public/docs/intro",
        headers={"Authorization": "Bearer whatever", "X-API-Key": "x", "X-Gateway-User-Id": "evil"},
    ) as response:
        assert response.status == 200
    [seen] = upstream.received
    assert seen.raw_path == "/v1/public/docs/intro"
    for name in ("Authorization", "X-API-Key", "X-Gateway-User-Id", "X-Gateway-Auth"):
        assert name not in seen.headers
