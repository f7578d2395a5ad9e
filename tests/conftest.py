"""Databases for tests: GATEWAY_TEST_DATABASE_URL when set, else one embedded server.

One migrated template per run; each test module gets a fresh database cloned from
it, which is fast.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.foundation import database
from tests.otlpreceiver import PATH, OtlpReceiver, application
from tests.support import ROOT, RecordingUpstream, recording_upstream


def _stale_builds() -> list[str]:
    """Modules whose mypyc build is older than their source (`make install` compiles
    the request path): Python imports the build first, so tests would run old code."""
    stale = []
    for built in (ROOT / "gateway").rglob("*.so"):
        source = built.with_name(built.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            stale.append(str(source.relative_to(ROOT)))
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("GATEWAY_COMPILE") == "0":
        return  # the sources are imported, not the builds (gateway/__init__.py)
    stale = _stale_builds()
    if stale:
        pytest.exit(f"compiled before their last change: {', '.join(stale)}; run make install", 4)


def _server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if url:
        return url
    return database.start_embedded(tmp_path_factory.mktemp("pg") / "pgdata", cleanup_mode="stop")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await database.migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _server_url(tmp_path_factory)


@pytest.fixture(scope="session")
def template_name(server_url: str) -> Iterator[str]:
    name = f"gw_tmpl_{secrets.token_hex(4)}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name}"))
    asyncio.run(_migrate(_with_database(server_url, name)))
    yield name
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def fresh_database(server_url: str, template: str | None) -> tuple[str, str]:
    name = f"gw_test_{secrets.token_hex(4)}"
    suffix = f" TEMPLATE {template}" if template else ""
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name}{suffix}"))
    return name, _with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="module")
def database_url(server_url: str, template_name: str) -> Iterator[str]:
    """A migrated database of this test module's own."""
    name, url = fresh_database(server_url, template_name)
    yield url
    drop_database(server_url, name)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with recording_upstream() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    """A real OTLP/HTTP trace receiver on loopback."""
    receiver = OtlpReceiver()
    runner = web.AppRunner(application(receiver), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}{PATH}"
    yield receiver
    await runner.cleanup()
