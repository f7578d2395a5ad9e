from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from gateway.foundation import database
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


async def test_a_migration_waits_for_the_lock_only_as_long_as_it_is_told(
    empty_database: str,
) -> None:
    """A fleet starting together queues on the advisory lock, for
    `database.migration_lock_timeout_seconds` — not the 5 s command timeout."""
    holder = await asyncpg.connect(empty_database)
    waiter = await asyncpg.connect(empty_database, command_timeout=0.2)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", database.MIGRATION_LOCK)
        started = asyncio.get_running_loop().time()
        with pytest.raises(database.DatabaseUnavailable, match="migration lock"):
            await database.migrate(waiter, lock_timeout=0.8)
        assert 0.7 <= asyncio.get_running_loop().time() - started < 2  # not the 0.2 s
        pending = asyncio.create_task(database.migrate(waiter, lock_timeout=30))
        await asyncio.sleep(0.5)  # longer than the command timeout: still waiting
        assert not pending.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", database.MIGRATION_LOCK)
        assert await pending == [version for version, _, _ in database.migrations()]
    finally:
        await holder.close()
        await waiter.close()


async def test_the_listing_index_is_built_concurrently_and_valid(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await database.migrate(conn)
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = 'api_keys_user_newest'"
        )
        assert valid is True
    finally:
        await conn.close()


async def test_a_failed_concurrent_index_leaves_the_schema_as_it_was(empty_database: str) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in a transaction, and a failed build leaves an
    invalid index behind: the migration's undo statement removes it."""
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1), (1)")
        sql = (
            "-- gateway: no-transaction\n"
            "-- gateway: undo: DROP INDEX CONCURRENTLY IF EXISTS t_unique\n"
            "CREATE UNIQUE INDEX CONCURRENTLY t_unique ON t (a)"
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await database._without_transaction(conn, sql)
        left = await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = 't_unique'")
        assert left == 0
    finally:
        await conn.close()
