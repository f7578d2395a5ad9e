"""A key's metadata (§21): set by an admin (API, CLI), given to upstreams as
`X-Gateway-Key-Meta` and the identity JWT's `meta` claim, in decision answers, kept by
a rotation, never shown to the key's owner, and changed on the next request."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.e2e.test_key_controls import _cli
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    admin_headers,
    bearer,
    cli_config,
    make_config,
    routes_dir,
    running_gateway,
    unique,
)

POLICY = """\
upstream: core
routes:
  - {methods: [GET], path: /v1/plain, scopes: [me:read], identity: headers}
  - {methods: [GET], path: /v1/signed, scopes: [me:read], identity: jwt}
"""
META = {"plan": "pro", "account": 42, "tags": ["beta"], "name": "Zoë"}


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


def decoded(header: str) -> Any:
    """What an upstream does with X-Gateway-Key-Meta: base64url without padding."""
    assert "=" not in header
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


async def admin(
    http: aiohttp.ClientSession, gateway: RunningGateway, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(
        method, gateway.admin + path, json=body, headers=admin_headers()
    ) as response:
        return response.status, await response.json()


async def seen_by_upstream(
    http: aiohttp.ClientSession,
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    path: str,
    key: str,
    **headers: str,
) -> Any:
    async with http.get(gateway.proxy + path, headers={**bearer(key), **headers}) as r:
        assert r.status == 200, await r.text()
    return upstream.received[-1].headers


async def test_meta_reaches_the_upstream_as_a_header_and_a_claim(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    body = {"user_id": unique("meta"), "name": "k", "scopes": ["me:read"], "meta": META}
    status, key = await admin(http, gateway, "POST", "/admin/v1/keys", body)
    assert status == 201 and key["meta"] == META
    seen = await seen_by_upstream(http, gateway, upstream, "/v1/plain", key["key"])
    assert decoded(seen["X-Gateway-Key-Meta"]) == META
    token = (await seen_by_upstream(http, gateway, upstream, "/v1/signed", key["key"]))[
        "X-Gateway-Identity"
    ]
    assert jwt.decode(token, options={"verify_signature": False})["meta"] == META
    status, listed = await admin(http, gateway, "GET", f"/admin/v1/keys/{key['id']}")
    assert status == 200 and listed["meta"] == META


async def test_a_change_applies_to_the_next_request_and_to_the_signed_identity(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    key = await gateway.create_key(unique("meta"), ["me:read"], meta={"plan": "free"})
    first = await seen_by_upstream(http, gateway, upstream, "/v1/signed", key["key"])
    status, changed = await admin(
        http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"meta": {"plan": "pro"}}
    )
    assert status == 200 and changed["meta"] == {"plan": "pro"}
    seen = await seen_by_upstream(http, gateway, upstream, "/v1/plain", key["key"])
    assert decoded(seen["X-Gateway-Key-Meta"]) == {"plan": "pro"}
    # The identity JWT is cached per credential: a change of metadata is not served stale.
    token = (await seen_by_upstream(http, gateway, upstream, "/v1/signed", key["key"]))[
        "X-Gateway-Identity"
    ]
    assert token != first["X-Gateway-Identity"]
    assert jwt.decode(token, options={"verify_signature": False})["meta"] == {"plan": "pro"}
    status, cleared = await admin(
        http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"meta": None}
    )
    assert status == 200 and cleared["meta"] is None
    seen = await seen_by_upstream(http, gateway, upstream, "/v1/plain", key["key"])
    assert "X-Gateway-Key-Meta" not in seen  # an upstream is not sent an empty line
    async with gateway.pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT action, details FROM audit_events WHERE key_id = $1::uuid ORDER BY id",
            key["id"],
        )
    assert [e["action"] for e in events][-2:] == ["key.updated", "key.updated"]
    assert json.loads(events[-2]["details"])["meta"] == {"plan": "pro"}


async def test_a_client_cannot_send_its_own_meta(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    key = await gateway.create_key(unique("meta"), ["me:read"])
    forged = base64.urlsafe_b64encode(b'{"plan":"enterprise"}').decode().rstrip("=")
    seen = await seen_by_upstream(
        http, gateway, upstream, "/v1/plain", key["key"], **{"X-Gateway-Key-Meta": forged}
    )
    assert "X-Gateway-Key-Meta" not in seen
    with_meta = await gateway.create_key(unique("meta"), ["me:read"], meta={"plan": "free"})
    seen = await seen_by_upstream(
        http, gateway, upstream, "/v1/plain", with_meta["key"], **{"X-Gateway-Key-Meta": forged}
    )
    assert [decoded(v) for v in seen.getall("X-Gateway-Key-Meta")] == [{"plan": "free"}]


async def test_a_decision_answer_carries_it(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("meta"), ["me:read"], meta=META)
    host, port = gateway.decisions_address
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/v1/plain", **bearer(key["key"])}
    async with http.get(f"http://{host}:{port}/decisions/auth-request", headers=headers) as r:
        assert r.status == 200
        assert decoded(r.headers["X-Gateway-Key-Meta"]) == META
    plain = await gateway.create_key(unique("meta"), ["me:read"])
    headers["Authorization"] = f"Bearer {plain['key']}"
    async with http.get(f"http://{host}:{port}/decisions/auth-request", headers=headers) as r:
        # Present and empty: a front proxy copying it overwrites whatever the client sent.
        assert r.status == 200 and r.headers.getall("X-Gateway-Key-Meta") == [""]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (["plan", "pro"], "must be a JSON object"),
        ("pro", "must be a JSON object"),
        ({"blob": "x" * 2040}, "must be at most 2048 bytes"),
    ],
)
async def test_meta_that_is_not_a_small_object_is_refused(
    gateway: RunningGateway, http: aiohttp.ClientSession, meta: Any, message: str
) -> None:
    body = {"user_id": unique("meta"), "name": "k", "scopes": ["me:read"], "meta": meta}
    status, problem = await admin(http, gateway, "POST", "/admin/v1/keys", body)
    assert status == 422
    assert [(e["field"], message in e["message"]) for e in problem["errors"]] == [("meta", True)]
    key = await gateway.create_key(unique("meta"), ["me:read"])
    status, problem = await admin(
        http, gateway, "PATCH", f"/admin/v1/keys/{key['id']}", {"meta": meta}
    )
    assert status == 422 and problem["errors"][0]["field"] == "meta"


async def test_a_rotation_keeps_meta_and_network_pins(
    gateway: RunningGateway, http: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    key = await gateway.create_key(
        unique("meta"), ["me:read"], meta=META, allowed_cidrs=["127.0.0.0/8"]
    )
    status, rotated = await admin(http, gateway, "POST", f"/admin/v1/keys/{key['id']}/rotate", {})
    assert status in (200, 201), rotated
    assert rotated["meta"] == META and rotated["allowed_cidrs"] == ["127.0.0.0/8"]
    seen = await seen_by_upstream(http, gateway, upstream, "/v1/plain", rotated["key"])
    assert decoded(seen["X-Gateway-Key-Meta"]) == META


async def test_the_cli_sets_and_removes_it(gateway: RunningGateway, tmp_path: Path) -> None:
    config = cli_config(tmp_path, gateway.config)
    made = await asyncio.to_thread(
        _cli, "keys", "create", "--user", unique("meta"), "--name", "k", "--scope", "me:read",
        "--meta", '{"plan": "pro"}', "--json", config=config,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["meta"] == {"plan": "pro"}
    cleared = await asyncio.to_thread(
        _cli, "keys", "update", created["id"], "--no-meta", "--json", config=config
    )
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["meta"] is None
    for given, said in [("{not json", "gateway: --meta: not JSON"),
                        ("[1]", "gateway: --meta: must be a JSON object")]:  # fmt: skip
        bad = await asyncio.to_thread(
            _cli, "keys", "update", created["id"], "--meta", given, config=config
        )
        assert bad.returncode == 1 and bad.stderr.startswith(said), bad.stderr
