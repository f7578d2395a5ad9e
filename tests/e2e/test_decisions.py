"""Decision endpoints (§12) against a real gateway: the request shapes nginx, Traefik,
Caddy and Envoy send, the answers each understands, the same refusals as the proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from tests.support import (
    RecordingUpstream,
    RunningGateway,
    make_config,
    raw_request,
    running_gateway,
    unique,
)

IDENTITY = ("X-Gateway-User-Id", "X-Gateway-Key-Id", "X-Gateway-Scopes", "X-Gateway-Auth",
            "X-Gateway-Route", "X-Request-Id")  # fmt: skip


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    config = make_config(
        tmp_path, database_url, upstream.url, decisions={"enabled": True, "listen": {"port": 0}}
    )
    async with running_gateway(config) as running:
        yield running


def decisions_url(gateway: RunningGateway) -> str:
    host, port = gateway.decisions_address
    return f"http://{host}:{port}"


def nginx(method: str, uri: str, **headers: str) -> tuple[str, str, dict[str, str]]:
    shape = {"X-Original-Method": method, "X-Original-URI": uri, "X-Original-Host": "api.example",
             "X-Original-Proto": "https", "X-Original-IP": "203.0.113.7"}  # fmt: skip
    return "GET", "/decisions/auth-request", {**shape, **headers}


def traefik(method: str, uri: str, **headers: str) -> tuple[str, str, dict[str, str]]:
    shape = {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Host": "api.example",
             "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1, 203.0.113.7"}  # fmt: skip
    return "GET", "/decisions/forward-auth", {**shape, **headers}


def envoy(method: str, uri: str, **headers: str) -> tuple[str, str, dict[str, str]]:
    # Envoy keeps the method, prepends path_prefix, sends no body (Content-Length: 0).
    shape = {"Host": "api.example", "X-Forwarded-Proto": "https", "Content-Length": "0"}
    return method, "/decisions/ext-authz" + uri, {**shape, **headers}


SHAPES = {"nginx": nginx, "traefik": traefik, "envoy": envoy}


async def ask(
    http: aiohttp.ClientSession, gateway: RunningGateway, request: tuple[str, str, dict[str, str]]
) -> tuple[int, CIMultiDict[str], Any]:
    method, path, headers = request
    url = URL(decisions_url(gateway) + path, encoded=True)
    async with http.request(method, url, headers=headers, skip_auto_headers=["Content-Type"]) as r:
        body = await r.read()
        return r.status, CIMultiDict(r.headers), body


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_allow_carries_the_identity(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream, shape: str
) -> None:
    user = unique("dana")
    key = await gateway.create_key(user, ["me:read"])
    request = SHAPES[shape]("GET", "/v1/me?x=1", Authorization=f"Bearer {key['key']}",
                            **{"X-Request-Id": "req-123"})  # fmt: skip
    status, headers, body = await ask(http, gateway, request)
    assert (status, body) == (200, b"")
    assert headers["X-Gateway-User-Id"] == user and headers["X-Gateway-Key-Id"] == key["id"]
    assert headers["X-Gateway-Scopes"] == "me:read" and headers["X-Gateway-Auth"] == "api_key"
    assert headers["X-Gateway-Route"] == "me" and headers["X-Request-Id"] == "req-123"
    assert headers["Cache-Control"] == "no-store"
    assert upstream.received == []  # a decision forwards nothing


FORBIDDEN = ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method", "X-Gateway-User-Id",
             "X-Gateway-Identity", "X-Gateway-Deny-Status", "x_gateway_anything"]  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("header", FORBIDDEN)
async def test_a_method_override_or_an_x_gateway_header_is_refused(
    gateway: RunningGateway, http: aiohttp.ClientSession, shape: str, header: str
) -> None:
    """A front proxy passes the client's headers on: an upstream that honours a method
    override would run a DELETE the policy refuses, and a client's X-Gateway-* header
    would reach it beside the decided identity."""
    key = await gateway.create_key(unique("mo"), ["me:read"])
    request = SHAPES[shape]("GET", "/v1/me", Authorization=f"Bearer {key['key']}",
                            **{header: "DELETE"})  # fmt: skip
    status, headers, body = await ask(http, gateway, request)
    problem = json.loads(body)
    assert problem["type"].endswith(":forbidden-header") and header in problem["detail"]
    if shape == "nginx":
        assert status == 403 and headers["X-Gateway-Deny-Status"] == "400"
        assert headers["X-Gateway-Deny-Reason"] == "forbidden-header"
    else:
        assert status == 400
    # The same request without it is allowed: the header alone was refused.
    del request[2][header]
    assert (await ask(http, gateway, request))[0] == 200


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_a_public_route_sends_every_identity_header_empty(
    gateway: RunningGateway, http: aiohttp.ClientSession, shape: str
) -> None:
    status, headers, _ = await ask(http, gateway, SHAPES[shape]("GET", "/v1/public/status"))
    assert status == 200
    assert all(name in headers for name in IDENTITY)
    assert headers["X-Gateway-User-Id"] == "" and headers["X-Gateway-Route"] != ""


REFUSALS = [
    ("/v1/me", "GET", None, 401, "missing-credential"),
    ("/v1/me", "GET", "gwk_nonsense", 401, "malformed-credential"),
    ("/v1/projects/p1", "DELETE", "key", 403, "insufficient-scope"),
    ("/v1/organizations/globex/projects", "GET", "key", 403, "not-a-member"),
    ("/v1/nowhere", "GET", "key", 404, "no-route"),
    ("/v1/public/../me", "GET", "key", 400, "bad-path"),
    ("/v1/public/%2e%2e/me", "GET", "key", 400, "bad-path"),
    ("/v1//me", "GET", "key", 400, "bad-path"),
]
# Only a header can carry these; Envoy sends its own method and always a path.
HEADER_ONLY = [
    ("/v1/me", "get", "key", 400, "bad-method"),
    ("http://evil.example/v1/me", "GET", "key", 400, "bad-path"),
]


@pytest.mark.parametrize(
    ("shape", "uri", "method", "credential", "status", "reason"),
    [("traefik", *case) for case in REFUSALS + HEADER_ONLY] + [("envoy", *c) for c in REFUSALS],
)
async def test_forward_auth_and_ext_authz_refuse_with_the_real_status(
    gateway: RunningGateway,
    http: aiohttp.ClientSession,
    shape: str,
    uri: str,
    method: str,
    credential: str | None,
    status: int,
    reason: str,
) -> None:
    user = unique("eve")
    key = await gateway.create_key(user, ["me:read", "projects:read"])
    headers = {}
    if credential:
        headers["Authorization"] = f"Bearer {key['key'] if credential == 'key' else credential}"
    got, answer, body = await ask(http, gateway, SHAPES[shape](method, uri, **headers))
    assert got == status, body
    assert answer["Content-Type"] == "application/problem+json"
    assert json.loads(body)["type"].endswith(reason)
    if status == 401:
        assert answer["WWW-Authenticate"] == "Bearer"
    if reason == "insufficient-scope":
        assert answer["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'


@pytest.mark.parametrize(
    ("uri", "credential", "told", "real", "reason"),
    [
        ("/v1/me", None, 401, "401", "missing-credential"),
        ("/v1/projects/p1", "key", 403, "403", "insufficient-scope"),
        ("/v1/nowhere", "key", 403, "404", "no-route"),
        ("/v1/public/../me", "key", 403, "400", "bad-path"),
    ],
)
async def test_auth_request_answers_only_401_or_403(
    gateway: RunningGateway,
    http: aiohttp.ClientSession,
    uri: str,
    credential: str | None,
    told: int,
    real: str,
    reason: str,
) -> None:
    key = await gateway.create_key(unique("fay"), ["me:read"])
    headers = {"X-API-Key": key["key"]} if credential else {}
    status, answer, _ = await ask(http, gateway, nginx("GET", uri, **headers))
    assert status == told
    assert answer["X-Gateway-Deny-Status"] == real and answer["X-Gateway-Deny-Reason"] == reason
    if told == 401:
        assert answer["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("missing", ["X-Original-Method", "X-Original-URI"])
async def test_a_missing_method_or_uri_is_a_refusal(
    gateway: RunningGateway, http: aiohttp.ClientSession, missing: str
) -> None:
    key = await gateway.create_key(unique("gus"), ["me:read"])
    method, path, headers = nginx("GET", "/v1/me", Authorization=f"Bearer {key['key']}")
    del headers[missing]
    status, answer, _ = await ask(http, gateway, (method, path, headers))
    assert status == 403 and answer["X-Gateway-Deny-Status"] == "400"


async def test_each_endpoint_reads_only_its_own_headers(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("hal"), ["me:read"])
    auth = {"Authorization": f"Bearer {key['key']}"}
    # Traefik-style headers at the nginx endpoint, nginx-style at forward-auth, and a
    # `Forwarded` header at both: none of them describes the request.
    _, _, traefik_headers = traefik("GET", "/v1/me", **auth)
    status, _, _ = await ask(http, gateway, ("GET", "/decisions/auth-request", traefik_headers))
    assert status == 403
    _, _, nginx_headers = nginx("GET", "/v1/me", **auth)
    status, _, _ = await ask(http, gateway, ("GET", "/decisions/forward-auth", nginx_headers))
    assert status == 400
    forwarded = {**auth, "Forwarded": 'for=1.2.3.4;host=x;proto=https;path="/v1/me"'}
    status, _, _ = await ask(http, gateway, ("GET", "/decisions/forward-auth", forwarded))
    assert status == 400
    status, _, _ = await ask(http, gateway, ("GET", "/decisions/forward-auth", traefik_headers))
    assert status == 200  # its own headers: allowed
    _, path, headers = traefik("GET", "/v1/me", **auth)
    two_uris = [*headers.items(), ("X-Forwarded-Uri", "/v1/public/x")]
    port = int(decisions_url(gateway).rsplit(":", 1)[1])
    head = "".join(f"{k}: {v}\r\n" for k, v in two_uris)
    raw = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: d\r\n{head}\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 400")


async def test_an_actor_token_decides_like_its_key(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("ida")
    key = await gateway.create_key(user, ["me:read", "actor_tokens:create"])
    async with http.post(
        gateway.proxy + "/auth/actor-tokens", headers={"Authorization": f"Bearer {key['key']}"}
    ) as r:
        token = (await r.json())["access_token"]
    status, headers, _ = await ask(
        http, gateway, envoy("GET", "/v1/me", Authorization=f"Bearer {token}")
    )
    assert status == 200 and headers["X-Gateway-Auth"] == "actor_token"
    assert headers["X-Gateway-Key-Id"] == key["id"]


async def test_a_body_is_never_read(gateway: RunningGateway, http: aiohttp.ClientSession) -> None:
    """A decision asked with a declared body that never arrives answers at once."""
    key = await gateway.create_key(unique("jo"), ["me:read"])
    port = int(decisions_url(gateway).rsplit(":", 1)[1])
    request = (
        "POST /decisions/ext-authz/v1/me HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {key['key']}\r\nContent-Length: 1000000\r\n\r\n"
    )
    raw = await raw_request(port, request.encode(), timeout=2)
    assert raw.startswith(b"HTTP/1.1 404")  # no POST route for /v1/me, decided without the body


async def test_decisions_are_logged_and_counted_with_their_endpoint(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("kai"), ["me:read"])
    auth = {"Authorization": f"Bearer {key['key']}"}
    for shape in SHAPES.values():
        await ask(http, gateway, shape("GET", "/v1/me", **auth))
    await ask(http, gateway, traefik("GET", "/v1/nowhere", **auth))
    async with http.get(gateway.admin + "/metrics") as r:
        metrics = await r.text()
    for endpoint in ("auth-request", "forward-auth", "ext-authz"):
        assert f'gateway_requests_total{{endpoint="{endpoint}",route="me",status="200"}}' in metrics
    await asyncio.sleep(0.2)  # the access log is written in 50 ms batches
    lines = gateway.log_lines()
    decided = {(line["endpoint"], line["path"], line["status"]) for line in lines}
    assert ("forward-auth", "/v1/nowhere", 404) in decided
    assert ("ext-authz", "/v1/me", 200) in decided
    assert key["key"] not in gateway.access_log.getvalue().decode()


async def test_unknown_decision_path_is_404(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(decisions_url(gateway) + "/decisions/other") as r:
        assert r.status == 404
