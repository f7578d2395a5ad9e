from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from gateway import database
from tests.conftest import drop_database, fresh_database


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    name, url = fresh_database(server_url, None)
    yield url
    drop_database(server_url, name)


async def _schema(conn: asyncpg.Connection) -> list[tuple[str, ...]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, column_name"
    )
    return [tuple(row.values()) for row in rows]


async def test_all_migrations_apply_once_and_rerun_is_a_no_op(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        applied = await database.migrate(conn)
        assert applied == [version for version, _, _ in database.migrations()]
        before = await _schema(conn)
        assert await database.migrate(conn) == []
        assert await _schema(conn) == before
        tables = {row[0] for row in before}
        assert {"api_keys", "memberships", "schema_migrations"} <= tables
    finally:
        await conn.close()


async def test_concurrent_migrations_do_not_collide(empty_database: str) -> None:
    conns = [await asyncpg.connect(empty_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(database.migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(database.migrations())]
    finally:
        for conn in conns:
            await conn.close()


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [version for version, _, _ in database.migrations()]
    assert versions == list(range(1, len(versions) + 1))
