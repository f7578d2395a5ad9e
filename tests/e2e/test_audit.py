"""The audit trail (§14): every change recorded once, in its own transaction, nothing for
a failed change, pagination that walks everything once, no secret, append-only."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.audit.events import Actor
from gateway.keys import management
from tests.hostapp import HostIdentity, host_app
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    admin_headers,
    bearer,
    make_config,
    running_gateway,
    unique,
)

AUDIT = "/admin/v1/audit"


async def events(http: aiohttp.ClientSession, gateway: RunningGateway, **query: str) -> list[Any]:
    async with http.get(gateway.admin + AUDIT, params=query, headers=admin_headers()) as r:
        assert r.status == 200, await r.text()
        page = await r.json()
    return list(page["events"])


async def admin(
    http: aiohttp.ClientSession, gateway: RunningGateway, method: str, path: str, body: Any = None
) -> tuple[int, Any, str]:
    async with http.request(method, gateway.admin + path, json=body, headers=admin_headers()) as r:
        data = await r.json() if r.status not in (204,) else None
        return r.status, data, r.headers.get("X-Request-Id", "")


async def test_every_admin_action_is_recorded_once_with_its_request(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("aud")
    create = {"user_id": user, "name": "ci", "scopes": ["me:read"], "description": "nightly"}
    _, key, created_rid = await admin(http, gateway, "POST", "/admin/v1/keys", create)
    _, new, rotated_rid = await admin(http, gateway, "POST", f"/admin/v1/keys/{key['id']}/rotate",
                                      {"grace_seconds": 60})  # fmt: skip
    await admin(http, gateway, "DELETE", f"/admin/v1/keys/{new['id']}")
    await admin(http, gateway, "DELETE", f"/admin/v1/keys/{new['id']}")  # already revoked: no event
    membership = {"user_id": user, "resource_type": "organization", "resource_id": "acme"}
    await admin(http, gateway, "PUT", "/admin/v1/memberships", membership)
    await admin(http, gateway, "PUT", "/admin/v1/memberships", membership)  # no change: no event
    await admin(http, gateway, "DELETE", "/admin/v1/memberships", membership)
    found = await events(http, gateway, user_id=user)
    assert [e["action"] for e in found] == [
        "membership.removed", "membership.added", "key.revoked", "key.rotated", "key.created",
    ]  # fmt: skip
    assert all(e["actor"] == "admin" and e["ip"] == "127.0.0.1" for e in found)
    first = found[-1]
    assert first["key_id"] == key["id"] and first["request_id"] == created_rid
    assert first["details"] == {"name": "ci", "description": "nightly", "scopes": ["me:read"],
                                "expires_at": None, "enabled": True,
                                "allowed_cidrs": [], "rate_limits": {},
                                "credits": None, "meta": None}  # fmt: skip
    rotation = found[-2]
    assert rotation["request_id"] == rotated_rid and rotation["details"]["new_key_id"] == new["id"]
    assert rotation["details"]["grace_seconds"] == 60
    assert found[0]["details"] == {"resource_type": "organization", "resource_id": "acme"}
    text = json.dumps(found)
    for secret in (key["key"], new["key"]):
        assert secret not in text and secret[4:20] not in text


async def test_self_service_actions_name_the_person(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    async with host_app() as host:
        config = make_config(tmp_path, database_url, upstream.url,
                             self_service=host.session_config())  # fmt: skip
        async with running_gateway(config) as gateway:
            await _self_service_round(gateway, host, http)


async def _self_service_round(
    gateway: RunningGateway, host: HostIdentity, http: aiohttp.ClientSession
) -> None:
    user = unique("pam")
    api = gateway.proxy + "/account/api-keys/v1"
    auth = bearer(host.token(user))
    async with http.post(
        api + "/keys", json={"name": "a", "scopes": ["me:read"]}, headers=auth
    ) as r:
        key = await r.json()
        request_id = r.headers["X-Request-Id"]
    async with http.patch(api + f"/keys/{key['id']}", json={"name": "b"}, headers=auth) as r:
        assert r.status == 200
    async with http.post(api + f"/keys/{key['id']}/rotate", json={}, headers=auth) as r:
        new = await r.json()
    async with http.delete(api + f"/keys/{new['id']}", headers=auth) as r:
        assert r.status == 204
    async with http.post(
        api + "/keys", json={"name": "", "scopes": ["me:read"]}, headers=auth
    ) as r:
        assert r.status == 422  # records nothing
    found = await events(http, gateway, user_id=user)
    assert [e["action"] for e in found] == [
        "key.revoked",
        "key.rotated",
        "key.updated",
        "key.created",
    ]
    assert {e["actor"] for e in found} == {f"user:{user}"}
    assert found[-1]["request_id"] == request_id and found[2]["details"] == {"name": "b"}


async def test_the_cli_is_recorded_as_cli(tmp_path: Path, database_url: str,
                                          gateway: RunningGateway, http: aiohttp.ClientSession) -> None:  # fmt: skip
    user = unique("cli")
    config = tmp_path / "cli.yaml"
    config.write_text(f"database: {{url: '{database_url}'}}\nstate_dir: {tmp_path}/state\n")
    argv = [sys.executable, "-m", "gateway", "keys", "create", "--user", user, "--name", "n",
            "--scope", "me:read", "--config", str(config)]  # fmt: skip
    assert (await asyncio.to_thread(_run, argv)).returncode == 0
    found = await events(http, gateway, user_id=user)
    assert [(e["actor"], e["action"]) for e in found] == [("cli", "key.created")]
    shown = await asyncio.to_thread(
        _run, [sys.executable, "-m", "gateway", "audit", "--user", user, "--json", "--config", str(config)]
    )  # fmt: skip
    assert shown.returncode == 0 and json.loads(shown.stdout)["events"] == found
    bad = await asyncio.to_thread(
        _run, [sys.executable, "-m", "gateway", "audit", "--since", "yesterday", "--config", str(config)]
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert (
        bad.stderr.startswith("gateway: --since: must be an RFC 3339 time")
        and "'yesterday'" in bad.stderr
    )
    tomorrow = await asyncio.to_thread(
        _run, [sys.executable, "-m", "gateway", "keys", "create", "--user", user, "--name", "n",
               "--scope", "me:read", "--expires-at", "tomorrow", "--config", str(config)]
    )  # fmt: skip
    assert tomorrow.returncode == 1 and tomorrow.stderr.count("\n") == 1
    assert tomorrow.stderr.startswith("gateway: --expires-at: must be an RFC 3339 time")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


async def test_a_failed_change_records_nothing(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("nil")
    status, _, _ = await admin(http, gateway, "POST", "/admin/v1/keys",
                               {"user_id": user, "name": "x", "scopes": ["nope"]})  # fmt: skip
    assert status == 422
    key = await gateway.create_key(user, ["me:read"])
    await admin(http, gateway, "DELETE", f"/admin/v1/keys/{key['id']}")
    status, _, _ = await admin(http, gateway, "POST", f"/admin/v1/keys/{key['id']}/rotate", {})
    assert status == 409
    async with gateway.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):  # the database refuses the change
            await management.set_membership(
                conn, user, "organization", "x" * 201, member=True, actor=Actor("admin")
            )
    assert [e["action"] for e in await events(http, gateway, user_id=user)] == [
        "key.revoked", "key.created",
    ]  # fmt: skip


async def test_two_processes_revoking_at_once_record_it_once(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    (tmp_path / "two").mkdir()
    async with (
        running_gateway(make_config(tmp_path, database_url, upstream.url)) as one,
        running_gateway(make_config(tmp_path / "two", database_url, upstream.url)) as two,
    ):
        key = await one.create_key(unique("race"), ["me:read"])
        await asyncio.gather(
            *(admin(http, g, "DELETE", f"/admin/v1/keys/{key['id']}") for g in [one, two] * 5)
        )
        found = await events(http, one, key_id=key["id"])
    assert [e["action"] for e in found] == ["key.revoked", "key.created"]


async def test_pagination_walks_every_event_once_while_new_ones_arrive(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("pag")
    for n in range(23):
        await gateway.member(user, "project", f"p{n}")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"user_id": user, "limit": "5", **({"cursor": cursor} if cursor else {})}
        async with http.get(gateway.admin + AUDIT, params=query, headers=admin_headers()) as r:
            page = await r.json()
        seen += [e["id"] for e in page["events"]]
        await gateway.member(user, "organization", f"new-{len(seen)}")  # arrives mid-walk
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 23
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)


@pytest.mark.parametrize(
    ("query", "field"),
    [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"key_id": "x"}, "key_id"),
     ({"action": "key.deleted"}, "action"), ({"since": "2026-01-01"}, "since"),
     ({"cursor": "bm9wZQ"}, "cursor"), ({"colour": "red"}, "colour")],
)  # fmt: skip
async def test_bad_filters_are_422(
    gateway: RunningGateway, http: aiohttp.ClientSession, query: dict[str, str], field: str
) -> None:
    async with http.get(gateway.admin + AUDIT, params=query, headers=admin_headers()) as r:
        assert r.status == 422
        assert [e["field"] for e in (await r.json())["errors"]] == [field]


async def test_filters_and_the_table_is_append_only(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    user = unique("fil")
    key = await gateway.create_key(user, ["me:read"])
    await gateway.member(user, "project", "p1")
    assert [e["action"] for e in await events(http, gateway, key_id=key["id"])] == ["key.created"]
    assert len(await events(http, gateway, user_id=user, action="membership.added")) == 1
    assert await events(http, gateway, user_id=user, since="2999-01-01T00:00:00Z") == []
    async with gateway.pool.acquire() as conn:
        for statement in ("UPDATE audit_events SET actor = 'cli'", "DELETE FROM audit_events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
