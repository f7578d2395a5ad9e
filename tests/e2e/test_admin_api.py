"""The admin API over HTTP; every response is checked against the served OpenAPI document."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate as validate_spec
from prometheus_client.parser import text_string_to_metric_families

from tests.openapi import check_answer
from tests.support import RecordingUpstream, RunningGateway, admin_headers, bearer, unique


class Admin:
    """Calls the admin API and validates each answer against the OpenAPI document."""

    def __init__(self, http: aiohttp.ClientSession, base: str, document: dict[str, Any]) -> None:
        self.http = http
        self.base = base
        self.document = document

    async def call(
        self,
        method: str,
        path: str,
        template: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        async with self.http.request(
            method,
            self.base + path,
            json=json,
            data=data,
            headers=admin_headers() if headers is None else headers,
        ) as response:
            raw = await response.read()
            body = None if not raw else await response.json(content_type=None)
            check_answer(
                self.document, template, method, response.status, response.content_type, body
            )
            return response.status, body


@pytest.fixture
async def admin(gateway: RunningGateway) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.admin + "/admin/v1/openapi.json", headers=admin_headers()) as r:
            document = await r.json()
        validate_spec(document)
        yield Admin(http, gateway.admin, document)


KEYS = "/admin/v1/keys"
ONE = "/admin/v1/keys/{id}"


async def test_create_get_list_revoke(
    admin: Admin, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    status, created = await admin.call(
        "POST",
        KEYS,
        KEYS,
        json={"user_id": user, "name": "ci", "scopes": ["me:read"], "expires_in_days": 30},
    )
    assert status == 201
    assert created["key"].startswith("gwk_") and created["display_prefix"] == created["key"][:12]
    status, one = await admin.call("GET", f"{KEYS}/{created['id']}", ONE)
    assert status == 200 and "key" not in one and one["status"] == "active"
    status, listing = await admin.call("GET", f"{KEYS}?user_id={user}", KEYS)
    assert [k["id"] for k in listing["keys"]] == [created["id"]]
    assert created["key"] not in str(listing)
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(created["key"])) as response:
        assert response.status == 200
    status, _ = await admin.call("DELETE", f"{KEYS}/{created['id']}", ONE)
    assert status == 204
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(created["key"])) as response:
        assert response.status == 401
    status, listing = await admin.call("GET", f"{KEYS}?user_id={user}", KEYS)
    assert listing["keys"][0]["status"] == "revoked"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"user_id": "", "name": "n", "scopes": ["me:read"]}, ["user_id"]),
        ({"user_id": "u", "name": "x" * 101, "scopes": ["me:read"]}, ["name"]),
        ({"user_id": "u", "name": "n", "scopes": ["me:read", "nope"]}, ["scopes[1]"]),
        ({"user_id": "u", "name": "n", "scopes": []}, ["scopes"]),
        (
            {
                "user_id": "u",
                "name": "n",
                "scopes": ["me:read"],
                "expires_at": "2020-01-01T00:00:00Z",
            },
            ["expires_at"],
        ),
        (
            {
                "user_id": "u",
                "name": "n",
                "scopes": ["me:read"],
                "expires_at": "2999-01-01T00:00:00",
            },
            ["expires_at"],
        ),
        (
            {
                "user_id": "u",
                "name": "n",
                "scopes": ["me:read"],
                "expires_at": "2999-01-01T00:00:00Z",
                "expires_in_days": 1,
            },
            ["expires_at"],
        ),
        ({"name": 5, "scopes": ["me:read"], "extra": 1}, ["extra", "user_id", "name"]),
    ],
)
async def test_create_validation_is_422_per_field(
    admin: Admin, body: dict[str, Any], fields: list[str]
) -> None:
    status, problem = await admin.call("POST", KEYS, KEYS, json=body)
    assert status == 422
    assert sorted(e["field"] for e in problem["errors"]) == sorted(fields)


async def test_malformed_bodies_and_tokens(admin: Admin) -> None:
    for raw in (b"{", b"[]", b'"x"', b""):
        status, _ = await admin.call(
            "POST",
            KEYS,
            KEYS,
            data=raw,
            headers={**admin_headers(), "Content-Type": "application/json"},
        )
        assert status == 400, raw
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        status, _ = await admin.call("GET", f"{KEYS}?user_id=u", KEYS, headers=headers)
        assert status == 401
    status, _ = await admin.call("GET", KEYS, KEYS)
    assert status == 422
    for key_id in (str(uuid.uuid4()), "not-a-uuid"):
        status, _ = await admin.call("GET", f"{KEYS}/{key_id}", ONE)
        assert status == 404
        status, _ = await admin.call("DELETE", f"{KEYS}/{key_id}", ONE)
        assert status == 404


async def test_rotation_inside_and_after_the_grace_period(
    admin: Admin, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    _, old = await admin.call(
        "POST", KEYS, KEYS, json={"user_id": user, "name": "r", "scopes": ["me:read"]}
    )
    rotate = "/admin/v1/keys/{id}/rotate"
    status, new = await admin.call(
        "POST", f"{KEYS}/{old['id']}/rotate", rotate, json={"grace_seconds": 1}
    )
    assert status == 201
    assert (new["name"], new["user_id"], new["scopes"]) == ("r", user, ["me:read"])
    assert new["key"] != old["key"]
    for key in (old["key"], new["key"]):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(key)) as response:
            assert response.status == 200
    # In its grace the old key says so, apart from an active key.
    _, listed = await admin.call("GET", f"{KEYS}?user_id={user}", KEYS)
    shown = {k["id"]: k for k in listed["keys"]}
    assert shown[new["id"]]["status"] == "active" and shown[new["id"]]["grace_ends_at"] is None
    assert shown[old["id"]]["status"] == "rotating"
    assert shown[old["id"]]["grace_ends_at"] == shown[old["id"]]["revoked_at"] is not None
    await asyncio.sleep(1.2)
    _, after = await admin.call("GET", f"{KEYS}/{old['id']}", "/admin/v1/keys/{id}")
    assert after["status"] == "revoked" and after["grace_ends_at"] is None
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(old["key"])) as response:
        assert response.status == 401
        assert "revoked" in (await response.json(content_type=None))["detail"]
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(new["key"])) as response:
        assert response.status == 200
    status, _ = await admin.call("POST", f"{KEYS}/{old['id']}/rotate", rotate)
    assert status == 409
    status, problem = await admin.call(
        "POST", f"{KEYS}/{new['id']}/rotate", rotate, json={"grace_seconds": -1}
    )
    assert status == 422 and problem["errors"][0]["field"] == "grace_seconds"
    status, _ = await admin.call("POST", f"{KEYS}/{new['id']}/rotate", rotate)
    assert status == 201
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(new["key"])) as response:
        assert response.status == 401


async def test_memberships_endpoints(
    admin: Admin, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    _, key = await admin.call(
        "POST", KEYS, KEYS, json={"user_id": user, "name": "m", "scopes": ["projects:read"]}
    )
    members = "/admin/v1/memberships"
    body = {"user_id": user, "resource_type": "project", "resource_id": "p-1"}
    url = gateway.proxy + "/v1/projects/p-1"
    async with http.get(url, headers=bearer(key["key"])) as response:
        assert response.status == 403
    assert (await admin.call("PUT", members, members, json=body))[0] == 204
    await asyncio.sleep(0.3)
    async with http.get(url, headers=bearer(key["key"])) as response:
        assert response.status == 200
    assert (await admin.call("DELETE", members, members, json=body))[0] == 204
    await asyncio.sleep(0.3)
    async with http.get(url, headers=bearer(key["key"])) as response:
        assert response.status == 403
    status, problem = await admin.call(
        "PUT", members, members, json={**body, "resource_type": "team"}
    )
    assert status == 422 and problem["errors"][0]["field"] == "resource_type"


async def test_admin_disabled_without_a_token_except_health(
    tmp_path: Any, database_url: str, upstream: RecordingUpstream
) -> None:
    from tests.support import make_config, running_gateway

    config = make_config(tmp_path, database_url, upstream.url, admin_token=None)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        async with http.get(
            gateway.admin + "/admin/v1/keys?user_id=u", headers=admin_headers()
        ) as r:
            assert r.status == 503
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(gateway.admin + path) as r:
                assert r.status == 200, path


async def test_metrics_parse_and_carry_no_secret(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("user"), ["me:read"])
    for headers in (bearer(key["key"]), {}):
        async with http.get(gateway.proxy + "/v1/me", headers=headers) as response:
            await response.read()
    async with http.get(gateway.admin + "/metrics") as response:
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["gateway_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("me", "200")] >= 1 and requests[("me", "401")] >= 1
    assert "gateway_cache_events" in families
    assert "gateway_db_query_duration_seconds" in families
    assert "gateway_policy_reloads" in families
    assert key["key"] not in text and key["key"][4:20] not in text


async def test_alerting_series_exist_before_anything_happens(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """A dashboard or alert on reload failures sees 0, not "no data", from the start."""
    async with http.get(gateway.admin + "/metrics") as response:
        text = await response.text()
    for series in (
        'gateway_policy_reloads_total{result="failure"} 0.0',
        'gateway_policy_reloads_total{result="success"} 0.0',
        'gateway_invalidations_total{kind="flush"} 0.0',
        "gateway_rate_limit_backend_errors_total 0.0",
    ):
        assert series in text


async def test_expires_at_with_offset_is_accepted(admin: Admin) -> None:
    when = (datetime.now(UTC) + timedelta(days=2)).astimezone().isoformat()
    status, created = await admin.call(
        "POST",
        KEYS,
        KEYS,
        json={"user_id": "u-exp", "name": "n", "scopes": ["me:read"], "expires_at": when},
    )
    assert status == 201
    assert datetime.fromisoformat(created["expires_at"]) == datetime.fromisoformat(when)


async def test_control_characters_are_422_not_a_database_error(admin: Admin) -> None:
    # Found by schemathesis (fuzz/admin_api.py): a NUL reached PostgreSQL.
    status, problem = await admin.call("GET", f"{KEYS}?user_id=a%00b", KEYS)
    assert status == 422 and problem["errors"][0]["field"] == "user_id"
    body = {"user_id": "u\x00", "name": "n\n", "scopes": ["me:read"]}
    status, problem = await admin.call("POST", KEYS, KEYS, json=body)
    assert status == 422
    assert sorted(e["field"] for e in problem["errors"]) == ["name", "user_id"]
