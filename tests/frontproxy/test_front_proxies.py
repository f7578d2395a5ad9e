"""nginx and Caddy, configured as the README says, asking a real gateway for decisions in
front of a recording upstream."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.foundation.problems import Problem
from gateway.policy.paths import split_path
from tests.frontproxy.conftest import Front
from tests.support import RecordingUpstream, RunningGateway, raw_request, unique

PROXIES = ["nginx", "caddy"]
# Each tries to reach something the policy refuses for the path the upstream receives.
CONFUSION = [
    "/v1/public/../me",
    "/v1/public/%2e%2e/me",
    "/v1/public/%2E%2E/me",
    "/v1/public/.%2e/me",
    "/v1/public/..%2fme",
    "/v1/public/%2e%2e%2fme",
    "/v1/public%2F..%2Fme",
    "/v1/public//../me",
    "//v1/me",
    "/v1//me",
    "/v1/public/x;/../../me",
    "/v1/public/x/..;/../me",
    "/v1/me;x",
    "/V1/ME",
    "/v1/Me",
    "/v1/public/./../me",
    "/v1/public/%5c..%5cme",
    "/v1/public/..\\me",
]


@pytest.fixture(params=PROXIES)
def front(request: pytest.FixtureRequest) -> Front:
    proxy: Front = request.getfixturevalue(request.param)
    return proxy


async def test_allowed_requests_carry_the_decided_identity(
    front: Front, gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("lin")
    key = await gateway.create_key(user, ["me:read"], meta={"plan": "pro"})
    async with http.get(
        front.url + "/v1/me?q=1", headers={"Authorization": f"Bearer {key['key']}"}
    ) as r:
        assert r.status == 200
    seen = upstream.received[-1]
    assert seen.raw_path == "/v1/me?q=1"
    assert seen.headers["X-Gateway-User-Id"] == user
    assert seen.headers["X-Gateway-Key-Id"] == key["id"]
    assert seen.headers["X-Gateway-Scopes"] == "me:read"
    assert seen.headers["X-Gateway-Auth"] == "api_key" and seen.headers["X-Gateway-Route"] == "me"
    assert seen.headers["X-Gateway-Key-Meta"] == "eyJwbGFuIjoicHJvIn0"  # {"plan":"pro"}
    assert seen.headers["X-Real-IP"] == "127.0.0.1"
    assert "Authorization" not in seen.headers and "X-API-Key" not in seen.headers
    async with http.get(front.url + "/v1/me", headers={"X-API-Key": key["key"]}) as r:
        assert r.status == 200
    assert "X-API-Key" not in upstream.received[-1].headers


SPOOFS = [
    {"X-Gateway-User-Id": "admin", "X-Gateway-Scopes": "everything"},
    {"X-Gateway-Key-Meta": "eyJwbGFuIjoiZW50ZXJwcmlzZSJ9"},
    {"X-Gateway-Identity": "forged.jwt.value"},
    {"X-Gateway-Deny-Status": "200", "X-Gateway-Anything": "1"},
]
OVERRIDES = ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"]


@pytest.mark.parametrize("path", ["/v1/me", "/v1/public/status"])
async def test_a_spoofed_x_gateway_header_never_reaches_the_upstream(
    front: Front,
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    path: str,
) -> None:
    """nginx passes it to the decision, which refuses it (403, X-Gateway-Deny-Status 400);
    Caddy's configuration removes every X-Gateway-* before asking. Either way the
    upstream sees only the decided identity."""
    user = unique("sam")
    key = await gateway.create_key(user, ["me:read"])
    for spoof in SPOOFS:
        headers = {"Authorization": f"Bearer {key['key']}", "X-Real-IP": "10.1.2.3", **spoof}
        async with http.get(front.url + path, headers=headers) as r:
            assert r.status in (200, 403), r.status
            if r.status == 403:
                assert r.headers.get("X-Gateway-Deny-Status", "400") == "400"
    for seen in upstream.received:
        assert seen.headers.get("X-Gateway-User-Id") == (user if path == "/v1/me" else "")
        assert "X-Gateway-Identity" not in seen.headers
        assert "X-Gateway-Anything" not in seen.headers
        assert seen.headers["X-Real-IP"] == "127.0.0.1"
        assert "forged" not in str(seen.headers) and "everything" not in str(seen.headers)
    print(f"\n{front.log.parent.name}: {len(SPOOFS)} spoofs on {path}, "
          f"{len(upstream.received)} forwarded clean")  # fmt: skip


async def test_a_method_override_is_refused_through_the_front_proxy(
    front: Front, gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    """The policy allows GET; an upstream that honours an override would run a DELETE."""
    user = unique("olga")
    key = await gateway.create_key(user, ["projects:read"])
    await gateway.member(user, "project", "p1")
    for name in OVERRIDES:
        headers = {"Authorization": f"Bearer {key['key']}", name: "DELETE"}
        async with http.get(front.url + "/v1/projects/p1", headers=headers) as r:
            assert r.status in (400, 403), (name, r.status)
    assert upstream.received == []
    async with http.get(
        front.url + "/v1/projects/p1", headers={"Authorization": f"Bearer {key['key']}"}
    ) as r:
        assert r.status == 200


@pytest.mark.parametrize(
    ("method", "path", "credential", "statuses"),
    [
        ("GET", "/v1/me", None, {401}),
        ("GET", "/v1/me", "gwk_nonsense", {401}),
        ("DELETE", "/v1/projects/p1", "key", {403}),
        ("GET", "/v1/organizations/globex/projects", "key", {403}),
        ("GET", "/v1/nowhere", "key", {403, 404}),  # nginx says 403; Caddy passes 404 on
    ],
)
async def test_refusals_reach_nobody(
    front: Front,
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    credential: str | None,
    statuses: set[int],
) -> None:
    key = await gateway.create_key(unique("max"), ["me:read", "projects:read"])
    headers = {}
    if credential:
        headers["Authorization"] = f"Bearer {key['key'] if credential == 'key' else credential}"
    async with http.request(method, front.url + path, headers=headers) as r:
        assert r.status in statuses
        if r.status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert upstream.received == []


async def test_an_upload_is_decided_without_its_body_and_then_forwarded(
    front: Front, gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("ned")
    key = await gateway.create_key(user, ["projects:write"])
    await gateway.member(user, "organization", "acme")
    body = bytes(range(256)) * 4096  # 1 MiB
    started = time.monotonic()
    async with http.post(
        front.url + "/v1/organizations/acme/projects",
        data=body,
        headers={
            "Authorization": f"Bearer {key['key']}",
            "Content-Type": "application/octet-stream",
        },
    ) as r:
        assert r.status == 200
    assert time.monotonic() - started < 5
    assert upstream.received[-1].body == body
    async with http.post(front.url + "/v1/organizations/acme/projects", data=body) as r:
        assert r.status == 401


async def test_path_confusion_never_reaches_what_the_policy_refuses(
    front: Front, upstream: RecordingUpstream, gateway: RunningGateway
) -> None:
    """No credential is sent: anything the upstream receives must be a public route for
    exactly the path it received."""
    router = gateway.runtime.policies.current.router
    statuses = []
    for path in CONFUSION:
        raw = await raw_request(
            front.port,
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\nConnection: close\r\n\r\n".encode(),
        )
        statuses.append(raw.split(b" ", 2)[1].decode() if raw else "closed")
    await asyncio.sleep(0)
    for seen in upstream.received:
        try:
            match = router.match("GET", split_path(seen.raw_path.partition("?")[0]))
        except Problem:
            match = None
        assert match is not None and match.route.public, f"upstream got {seen.raw_path}"
    print(f"\n{front.log.parent.name}: {len(CONFUSION)} confusing paths → {statuses}; "
          f"{len(upstream.received)} forwarded, all public")  # fmt: skip
