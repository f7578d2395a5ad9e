"""The self-service API (§11) through a real gateway: real PostgreSQL, a real upstream,
the host application's real JWKS on loopback, real signed session JWTs."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from openapi_spec_validator import validate as validate_spec

from gateway.audit.events import Actor
from gateway.credits import pools
from tests.hostapp import COOKIE, HostIdentity, host
from tests.openapi import check_answer
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    raw_request,
    running_gateway,
    unique,
)

__all__ = ["host"]  # a fixture
PAGE = "/account/api-keys"
API = PAGE + "/v1"
EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, host: HostIdentity
) -> AsyncIterator[RunningGateway]:
    self_service = {
        **host.session_config(),
        "max_keys_per_user": 3,
        "allowed_scopes": ["me:read", "projects:read", "projects:write", "actor_tokens:create"],
    }
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        self_service=self_service,
        cors={"allow_origins": ["https://app.example"]},
    )
    async with running_gateway(config) as running:
        yield running


class Person:
    """A signed-in person talking to the API with a Bearer session (no cookie); every
    answer is checked against the self-service OpenAPI document."""

    def __init__(self, http: aiohttp.ClientSession, gateway: RunningGateway, token: str):
        self.http, self.base, self.token = http, gateway.proxy + API, token
        self.document: dict[str, Any] | None = None

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        if self.document is None:
            async with self.http.get(self.base + "/openapi.json") as response:
                self.document = await response.json()
            validate_spec(self.document)
        async with self.http.request(
            method, self.base + path, json=body, headers=bearer(self.token)
        ) as response:
            data = await response.json(content_type=None) if response.status != 204 else None
            assert response.headers["Cache-Control"] == "no-store", (method, path)
            template = API + re.sub(r"/keys/[^/?]+", "/keys/{id}", path.partition("?")[0])
            check_answer(
                self.document, template, method, response.status, response.content_type, data
            )
            return response.status, data, response.headers


@pytest.fixture
async def alice(http: aiohttp.ClientSession, gateway: RunningGateway, host: HostIdentity) -> Person:
    return Person(http, gateway, host.token(unique("alice")))


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Collect().feed(html)
    return found


def _user(person: Person) -> str:
    return str(jwt.decode(person.token, options={"verify_signature": False})["sub"])


async def test_session_describes_the_user_catalogue_and_limits(alice: Person) -> None:
    status, data, _ = await alice.call("GET", "/session")
    assert status == 200
    assert data["user"] == {"id": _user(alice), "name": f"{_user(alice)}@example.com"}
    names = [scope["name"] for scope in data["scopes"]]
    assert names == ["me:read", "projects:read", "projects:write", "actor_tokens:create"]
    write = next(s for s in data["scopes"] if s["name"] == "projects:write")
    assert write == {
        "name": "projects:write",
        "description": "Update project data",
        "implies": ["projects:read"],
    }
    assert data["expiry_days"] == {"presets": [7, 30, 60, 90], "default": 30, "max": 365,
                                   "allow_never": False, "policy_max": None}  # fmt: skip
    assert data["max_keys"] == 3


async def test_create_list_use_and_delete_a_key(
    alice: Person, gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    body = {"name": "Figma plugin", "description": "laptop", "scopes": ["me:read"]}
    status, created, _ = await alice.call("POST", "/keys", body)
    assert status == 201
    assert created["key"].startswith("gwk_") and "user_id" not in created
    assert created["description"] == "laptop" and created["status"] == "active"
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(created["key"])) as r:
        assert r.status == 200
    assert upstream.received[-1].headers["X-Gateway-User-Id"] == _user(alice)
    status, listed, _ = await alice.call("GET", "/keys")
    assert [k["id"] for k in listed["keys"]] == [created["id"]]
    assert created["key"] not in str(listed) and "user_id" not in listed["keys"][0]
    assert listed["keys"][0]["display_prefix"] == created["key"][:12]
    status, _, _ = await alice.call("DELETE", f"/keys/{created['id']}")
    assert status == 204
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(created["key"])) as r:
        assert r.status == 401
    assert (await alice.call("GET", "/keys"))[1]["keys"] == []
    inactive = (await alice.call("GET", "/keys?status=inactive"))[1]["keys"]
    assert [(k["id"], k["status"]) for k in inactive] == [(created["id"], "revoked")]
    assert len((await alice.call("GET", "/keys?status=all"))[1]["keys"]) == 1
    assert (await alice.call("GET", "/keys?status=bogus"))[0] == 422


async def test_another_persons_key_is_not_found(
    alice: Person, http: aiohttp.ClientSession, gateway: RunningGateway, host: HostIdentity
) -> None:
    bob = Person(http, gateway, host.token(unique("bob")))
    _, key, _ = await bob.call("POST", "/keys", {"name": "bob's", "scopes": ["me:read"]})
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path, body in [
        ("PATCH", "/keys/{}", {"name": "mine now"}),
        ("POST", "/keys/{}/rotate", {}),
        ("DELETE", "/keys/{}", None),
    ]:
        theirs = await alice.call(method, path.format(key["id"]), body)
        nothing = await alice.call(method, path.format(unknown), body)
        assert theirs[0] == nothing[0] == 404
        assert (
            theirs[1]["type"] == nothing[1]["type"] and theirs[1]["detail"] == nothing[1]["detail"]
        )
    assert (await alice.call("GET", "/keys"))[1]["keys"] == []
    _, bobs, _ = await bob.call("GET", "/keys")
    assert [(k["name"], k["status"]) for k in bobs["keys"]] == [("bob's", "active")]


async def test_expiry_rules(alice: Person) -> None:
    base = {"name": "k", "scopes": ["me:read"]}
    now = datetime.now(UTC)
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"expires_in_days": 7}, 201, None),
        ({"expires_in_days": 7.0}, 201, None),
        ({"expires_in_days": 366}, 422, "expires_in_days"),
        ({"expires_in_days": 0}, 422, "expires_in_days"),
        ({"expires_at": (now + timedelta(days=10)).isoformat()}, 201, None),
        ({"expires_at": (now + timedelta(days=400)).isoformat()}, 422, "expires_at"),
        ({"expires_at": (now - timedelta(days=1)).isoformat()}, 422, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, 422, "expires_at"),
        ({"never": True}, 422, "never"),
        ({"never": "yes"}, 422, "never"),
        ({"expires_in_days": 7, "never": True}, 422, "expires_at"),
    ]
    for extra, status, field in cases:
        got, data, _ = await alice.call("POST", "/keys", {**base, **extra})
        assert got == status, (extra, data)
        if field:
            assert field in [e["field"] for e in data["errors"]], (extra, data)
        else:
            await alice.call("DELETE", f"/keys/{data['id']}")


async def test_never_is_allowed_when_configured(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, host: HostIdentity,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    self_service = {**host.session_config(), "expiry_days": {"allow_never": True}}
    config = make_config(tmp_path, database_url, upstream.url, self_service=self_service)
    async with running_gateway(config) as running:
        person = Person(http, running, host.token(unique("carol")))
        status, key, _ = await person.call("POST", "/keys", {"name": "n", "scopes": ["me:read"],
                                                             "never": True})  # fmt: skip
        assert status == 201 and key["expires_at"] is None


async def test_field_errors_are_one_per_field(alice: Person) -> None:
    body = {
        "name": "",
        "description": "d" * 501,
        "scopes": ["me:read", "projects:admin", "nope", 7],
        "colour": "red",
    }
    status, data, _ = await alice.call("POST", "/keys", body)
    assert status == 422
    fields = [e["field"] for e in data["errors"]]
    assert fields == ["colour", "name", "description", "scopes[1]", "scopes[2]", "scopes[3]"]
    assert (await alice.call("POST", "/keys", {"name": "x", "scopes": []}))[0] == 422


async def test_at_most_max_keys_per_user(alice: Person) -> None:
    ids = []
    for i in range(3):
        status, key, _ = await alice.call("POST", "/keys", {"name": f"k{i}", "scopes": ["me:read"]})
        assert status == 201
        ids.append(key["id"])
    status, data, _ = await alice.call("POST", "/keys", {"name": "k3", "scopes": ["me:read"]})
    assert status == 409 and data["type"].endswith("too-many-keys")
    await alice.call("DELETE", f"/keys/{ids[0]}")  # revoked keys do not count
    assert (await alice.call("POST", "/keys", {"name": "k4", "scopes": ["me:read"]}))[0] == 201


async def test_concurrent_creates_respect_the_limit(alice: Person) -> None:
    body = {"name": "race", "scopes": ["me:read"]}
    results = await asyncio.gather(*(alice.call("POST", "/keys", body) for _ in range(8)))
    assert sorted(status for status, _, _ in results) == [201] * 3 + [409] * 5


async def test_update_name_and_description(alice: Person) -> None:
    _, key, _ = await alice.call("POST", "/keys", {"name": "old", "scopes": ["me:read"],
                                                   "description": "d"})  # fmt: skip
    status, updated, _ = await alice.call("PATCH", f"/keys/{key['id']}", {"name": "new"})
    assert status == 200 and (updated["name"], updated["description"]) == ("new", "d")
    status, updated, _ = await alice.call("PATCH", f"/keys/{key['id']}", {"description": ""})
    assert status == 200 and updated["description"] is None and "key" not in updated
    assert (await alice.call("PATCH", f"/keys/{key['id']}", {"name": ""}))[0] == 422
    assert (await alice.call("PATCH", f"/keys/{key['id']}", {"scopes": ["x"]}))[0] == 422


async def test_rotate(alice: Person, gateway: RunningGateway, http: aiohttp.ClientSession) -> None:
    _, old, _ = await alice.call("POST", "/keys", {"name": "rot", "scopes": ["me:read"]})
    assert (await alice.call("POST", f"/keys/{old['id']}/rotate", {"grace_seconds": 604801}))[
        0
    ] == 422
    status, new, _ = await alice.call(
        "POST", f"/keys/{old['id']}/rotate", {"grace_seconds": 0, "expires_in_days": 7}
    )
    assert status == 201 and new["key"] != old["key"] and new["name"] == "rot"
    expires = datetime.fromisoformat(new["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=1)
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(new["key"])) as r:
        assert r.status == 200
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(old["key"])) as r:
        assert r.status == 401
    status, data, _ = await alice.call("POST", f"/keys/{old['id']}/rotate", {})
    assert status == 409 and data["type"].endswith("key-not-active")
    # Without a period asked for, the new key keeps the old one's expiry (as the CLI does).
    status, again, _ = await alice.call("POST", f"/keys/{new['id']}/rotate", {})
    assert status == 201 and again["expires_at"] == new["expires_at"]


async def test_a_key_or_an_actor_token_is_never_a_session(
    alice: Person, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    _, key, _ = await alice.call(
        "POST", "/keys", {"name": "k", "scopes": ["me:read", "actor_tokens:create"]}
    )
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=bearer(key["key"])) as r:
        actor = (await r.json())["access_token"]
    for headers in (bearer(key["key"]), bearer(actor), {"X-API-Key": key["key"]}):
        async with http.get(gateway.proxy + API + "/keys", headers=headers) as r:
            assert r.status == 401, headers
            assert key["key"] not in await r.text()
        async with http.post(
            gateway.proxy + API + "/keys",
            headers=headers,
            json={"name": "x", "scopes": ["me:read"]},
        ) as r:
            assert r.status == 401


async def test_signed_out_and_forged_sessions_get_401(
    gateway: RunningGateway, http: aiohttp.ClientSession, host: HostIdentity
) -> None:
    forged = [
        None,
        HostIdentity().token("mallory"),
        host.token("mallory", iss="https://evil.example"),
        host.token("mallory", exp=int(time.time()) - 3600),
        host.token("mallory", kid="ed-404"),
    ]
    for token in forged:
        headers = bearer(token) if token else {}
        async with http.get(gateway.proxy + API + "/session", headers=headers) as r:
            assert r.status == 401
            body = await r.json(content_type=None)
            assert r.headers["Content-Type"] == "application/problem+json"
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert body["login_url"] == f"{host.url}/login"


async def test_jwks_unreachable_is_503_not_500(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    dead = HostIdentity(url="http://127.0.0.1:9")  # nothing listens on the discard port
    config = make_config(tmp_path, database_url, upstream.url, self_service=dead.session_config())
    async with running_gateway(config) as running:
        async with http.get(running.proxy + API + "/session", headers=bearer(dead.token("a"))) as r:
            assert r.status == 503 and "Retry-After" in r.headers
            assert (await r.json(content_type=None))["type"].endswith("session-keys-unavailable")


async def test_a_jwks_file_works_too(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    identity = HostIdentity()
    (tmp_path / "jwks.json").write_text(json.dumps(identity.jwks()))
    session = identity.session_config(jwks_url=None, jwks_file="jwks.json")
    config = make_config(tmp_path, database_url, upstream.url, self_service=session)
    async with running_gateway(config) as running:
        async with http.get(running.proxy + API + "/session",
                            headers=bearer(identity.token("dora"))) as r:  # fmt: skip
            assert r.status == 200 and (await r.json())["user"]["id"] == "dora"


async def test_cookie_mode_refuses_cross_site_requests(
    gateway: RunningGateway, host: HostIdentity
) -> None:
    token = host.token(unique("erin"))
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        browser.cookie_jar.update_cookies({COOKIE: token})
        url = gateway.proxy + API + "/keys"
        own = gateway.proxy  # the page's own origin
        body = {"name": "c", "scopes": ["me:read"]}
        async with browser.get(url) as r:
            assert r.status == 200  # reading needs no Origin
        for headers, expected in [
            ({}, 403),
            ({"Origin": "https://evil.example"}, 403),
            ({"Origin": "null"}, 403),
            ({"Origin": own}, 201),
            ({"Origin": "https://app.example"}, 201),  # listed in cors.allow_origins
        ]:
            async with browser.post(url, json=body, headers=headers) as r:
                assert r.status == expected, headers
                if expected == 201:
                    await browser.delete(f"{url}/{(await r.json())['id']}", headers={"Origin": own})
        # A form post (text/plain) from the right origin is still refused.
        async with browser.post(
            url, data=b'{"name": "c", "scopes": ["me:read"]}',
            headers={"Origin": own, "Content-Type": "text/plain"},
        ) as r:  # fmt: skip
            assert r.status == 403
        async with browser.delete(url + "/00000000-0000-4000-8000-000000000000") as r:
            assert r.status == 403  # no Origin: refused before the lookup


async def test_page_headers_and_no_inline_code(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.proxy + PAGE) as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert r.headers["Content-Security-Policy"] == EXPECTED_CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        html = await r.text()
    tags = _tags(html)
    assert all(dict(attrs).get("src") for tag, attrs in tags if tag == "script")
    assert not [tag for tag, _ in tags if tag == "style"]
    inline = [(t, n) for t, attrs in tags for n, _ in attrs if n == "style" or n.startswith("on")]
    assert not inline
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        async with http.get(f"{gateway.proxy}{PAGE}/static/{asset}") as r:
            assert r.status == 200 and r.content_type == kind
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    port = int(gateway.proxy.rsplit(":", 1)[1])
    raw = await raw_request(
        port, f"GET {PAGE}/static/../../v1/me HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert raw.startswith(b"HTTP/1.1 400")  # dot segments never reach the page handler
    async with http.get(f"{gateway.proxy}{PAGE}/static/nope.js") as r:
        assert r.status == 404
    async with http.post(gateway.proxy + PAGE) as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"


async def test_no_secret_in_the_access_log(alice: Person, gateway: RunningGateway) -> None:
    _, key, _ = await alice.call("POST", "/keys", {"name": "k", "scopes": ["me:read"]})
    await alice.call("POST", f"/keys/{key['id']}/rotate", {})
    await asyncio.sleep(0.2)  # the access log is written in 50 ms batches
    lines = gateway.log_lines()
    text = gateway.access_log.getvalue().decode()
    assert key["key"] not in text and alice.token not in text
    mine = [
        line
        for line in lines
        if line["route"] == "self-service" and not line["path"].endswith("/openapi.json")
    ]
    assert mine and all(line["user_id"] == _user(alice) for line in mine)


async def test_the_list_carries_the_users_credit_pool(
    http: aiohttp.ClientSession, gateway: RunningGateway, host: HostIdentity
) -> None:
    """The page shows the pool its keys spend (§21), from the same answer as the keys."""
    user = unique("pool")
    person = Person(http, gateway, host.token(user))
    status, listed, _ = await person.call("GET", "/keys")
    assert status == 200 and listed["credits"] is None
    refill = {"interval": "month", "amount": 100, "day": 1}
    async with gateway.pool.acquire() as conn:
        await pools.put(conn, user, {"remaining": 7, "refill": refill}, actor=Actor("admin"))
    status, listed, _ = await person.call("GET", "/keys")
    assert listed["credits"] == {"remaining": 7, "refill": refill}
