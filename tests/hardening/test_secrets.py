"""After a full scenario, no issued key or token in any log line, error body, metric or
database column."""

from __future__ import annotations

import asyncio
import logging
import shutil
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from gateway.audit.events import Actor
from gateway.keys import management
from tests.support import RecordingUpstream, RunningGateway, admin_headers, bearer, unique


async def _all_rows_as_text(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        texts = []
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{table["table_name"]}" t')
            texts += [row["row"] for row in rows]
        return "\n".join(texts)
    finally:
        await conn.close()


async def test_no_secret_anywhere(
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = unique("user")
    secrets: list[str] = []
    bodies: list[str] = []
    create = {"user_id": user, "name": "s", "scopes": ["me:read", "actor_tokens:create"]}
    async with http.post(
        gateway.admin + "/admin/v1/keys", json=create, headers=admin_headers()
    ) as r:
        key = await r.json()
    secrets.append(key["key"])
    async with http.post(gateway.proxy + "/auth/actor-tokens", headers=bearer(key["key"])) as r:
        token = (await r.json())["access_token"]
    secrets.append(token)
    attempts = [
        bearer(key["key"]),
        bearer(token),
        bearer(key["key"] + "x"),
        bearer(token[:-3] + "abc"),
        {"X-API-Key": key["key"]},
        {"Authorization": "Basic " + key["key"]},
    ]
    for headers in attempts:
        for path in ("/v1/me", "/v1/projects/p1", "/nowhere", "/v1/me/%2e%2e"):
            async with http.get(gateway.proxy + path, headers=headers) as response:
                bodies.append(await response.text())
    rotate = f"/admin/v1/keys/{key['id']}/rotate"
    async with http.post(gateway.admin + rotate, headers=admin_headers()) as r:
        secrets.append((await r.json())["key"])
    async with gateway.pool.acquire() as conn:
        await management.revoke_key(conn, key["id"], actor=Actor("admin"))
    for headers in attempts[:2]:
        async with http.get(gateway.proxy + "/v1/me", headers=headers) as response:
            bodies.append(await response.text())
    async with http.get(
        gateway.admin + f"/admin/v1/keys?user_id={user}", headers=admin_headers()
    ) as r:
        bodies.append(await r.text())
    async with http.get(gateway.admin + "/metrics") as r:
        metrics = await r.text()
    await gateway.store.flush_last_used()
    database = await _all_rows_as_text(database_url)
    dump = ""
    if shutil.which("pg_dump") and urlsplit(database_url).hostname:
        process = await asyncio.create_subprocess_exec(
            "pg_dump", "--data-only", database_url, stdout=asyncio.subprocess.PIPE
        )
        dump = (await process.communicate())[0].decode()
        assert process.returncode == 0
    await asyncio.sleep(0.2)  # the access log is written in batches
    places = {
        "access log": gateway.access_log.getvalue().decode(),
        "other logs": "\n".join(r.getMessage() for r in caplog.records),
        "error bodies": "\n".join(bodies),
        "metrics": metrics,
        "database rows": database,
        "pg_dump": dump,
        "upstream headers": "\n".join(str(r.headers) for r in upstream.received),
    }
    found = {
        place: [s[:8] for s in secrets if s in text or s[4:] in text]
        for place, text in places.items()
    }
    print(f"\nsecrets scan: {len(secrets)} secrets in {len(places)} places -> {found}")
    assert all(not hits for hits in found.values())
    assert "api_keys" in dump or not dump
