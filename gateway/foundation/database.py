"""PostgreSQL: the pool, forward-only migrations and the embedded server.

`database.url: null` starts an embedded PostgreSQL (pgserver) under the state
directory, falling back to a local installation's initdb/pg_ctl.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.foundation import failover
from gateway.foundation.config import Config

log = logging.getLogger("gateway.database")

# The NOTIFY channel every gateway process listens on for changes it may have cached
# (keys, memberships, credits): `keys.invalidation` sends and applies the messages.
INVALIDATION_CHANNEL = "gateway_invalidation"
# Any constant will do; it only has to be the same in every gateway process.
MIGRATION_LOCK = 0x6761_7465_7761_79


T = TypeVar("T")

# A connection of its own (CLI) or one borrowed from the pool (admin API).
Conn = asyncpg.Connection | PoolConnectionProxy


# Errors that mean "no database right now", as opposed to a bug in a query: 503.
DATABASE_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.TargetServerAttributeNotMatched,  # every host answered, none is a primary
    asyncpg.ReadOnlySQLTransactionError,  # a primary demoted or fenced under the connection
)
# What a lookup or a background writer (usage, last use, credits, webhooks) counts as
# "not now": the lookup answers 503, the writer keeps what it holds for the next round.
UNAVAILABLE = (
    TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,
)


class DatabaseUnavailable(Exception):
    """The embedded database cannot be started here; the message says what to do."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    folder = importlib.resources.files("gateway") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


# A migration that must not run in a transaction (`CREATE INDEX CONCURRENTLY`) says so in
# its first line, holds one statement, and names the statement that undoes a failed run.
_NO_TRANSACTION = "-- gateway: no-transaction"
_UNDO = re.compile(r"^-- gateway: undo: (.+)$", re.M)


async def migrate(conn: asyncpg.Connection, lock_timeout: float = 300.0) -> list[int]:
    """Apply pending migrations under an advisory lock; returns the versions applied.

    Processes starting together queue on the lock for up to `lock_timeout` (not the
    command timeout: another may be building an index). Each migration runs in a
    transaction, so a failed one leaves the schema as it was; one that cannot (an
    index built `CONCURRENTLY`, which leaves the table writable) runs its undo then."""
    applied: list[int] = []
    await _lock_for_migrations(conn, lock_timeout)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            if sql.startswith(_NO_TRANSACTION):
                await _without_transaction(conn, sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            else:
                async with conn.transaction():
                    await conn.execute(sql, timeout=None)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
            applied.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def _lock_for_migrations(conn: asyncpg.Connection, patience: float) -> None:
    """Take the migration lock, asking again every 0.2 s: a process blocked in
    `pg_advisory_lock` would sit in a transaction that `CREATE INDEX CONCURRENTLY`, run
    by the holder, waits for — a deadlock."""
    deadline = asyncio.get_running_loop().time() + patience
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK):
        if asyncio.get_running_loop().time() >= deadline:
            raise DatabaseUnavailable(
                f"another process held the migration lock for over {patience:g} s"
                " (database.migration_lock_timeout_seconds)"
            )
        await asyncio.sleep(0.2)


async def _without_transaction(conn: asyncpg.Connection, sql: str) -> None:
    undo = _UNDO.search(sql)
    if undo is not None:
        await conn.execute(undo[1])  # what a killed earlier run may have left (an invalid index)
    try:
        await conn.execute(sql, timeout=None)
    except BaseException:
        if undo is not None:
            await conn.execute(undo[1])
        raise


async def bounded(pool: asyncpg.Pool, run: Callable[[Any], Awaitable[T]], seconds: float) -> T:
    """`run` on a pooled connection: taking one and running it share one timeout, so an
    unreachable server (no reset) costs one wait, not a connect and a statement each. A
    connection whose statement did not come back in time is terminated, not released:
    releasing it would wait, with no limit, for a cancel request that cannot reach the
    server either."""
    deadline = asyncio.get_running_loop().time() + seconds
    async with asyncio.timeout_at(deadline):
        conn = await pool.acquire()
    try:
        async with asyncio.timeout_at(deadline):
            return await run(conn)
    except TimeoutError:
        conn.terminate()
        raise
    finally:
        await pool.release(conn)


async def create_pool(url: str, config: Config) -> asyncpg.Pool:
    """The pool; with several hosts in `url`, they are asked at once and, when the URL
    asks for a writable server, a connection whose server turned read-only is left."""
    db = config.database
    pool = await asyncpg.create_pool(
        url,
        connect=failover.pool_connect,
        setup=failover.refuse_read_only if failover.wants_writable(url) else None,
        min_size=min(db.min_pool_size, db.max_pool_size),
        max_size=db.max_pool_size,
        timeout=db.connect_timeout_seconds,
        command_timeout=db.command_timeout_seconds,
    )
    assert pool is not None
    return pool


async def connect(url: str, config: Config) -> asyncpg.Connection:
    return await failover.connect(
        url,
        timeout=config.database.connect_timeout_seconds,
        command_timeout=config.database.command_timeout_seconds,
    )


def database_url(config: Config, embedded_cleanup: str | None = None) -> str:
    """The configured URL, or that of the embedded server (started if needed)."""
    if config.database.url:
        return config.database.url
    return start_embedded(config.state_path / "pgdata", embedded_cleanup)


def start_embedded(pgdata: Path, cleanup_mode: str | None = None) -> str:
    """Start (or reuse) the embedded server; by default it outlives this process, with
    `cleanup_mode="stop"` it stops when the last process using it exits."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver (through platformdirs) warns about XDG_RUNTIME_DIR on servers; harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            return _start_local_postgres(pgdata)
        _forget_dead_handles(pgdata)
        try:
            # Outliving the process lets the CLI's short commands and a running
            # gateway share one server.
            server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)  # type: ignore[attr-defined,unused-ignore]
        except Exception as exc:
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL did not start ({exc}); set GATEWAY_DATABASE_URL"
            ) from None
    return str(server.get_uri())


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver stops the server when the last process using it exits, counting them in
    a file; a process that was killed never takes itself off, and the server would
    then outlive every later demo. Drop the ones that are gone."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _running(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_local_postgres(pgdata: Path) -> str:
    bindir = _local_postgres_bin()
    if bindir is None:
        raise DatabaseUnavailable(
            "no embedded PostgreSQL (pgserver is not installed) and no initdb/pg_ctl found;"
            " set GATEWAY_DATABASE_URL"
        )
    socket_dir = pgdata / "run"
    if not (pgdata / "PG_VERSION").exists():
        _run([str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"])
    socket_dir.mkdir(exist_ok=True)
    status = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [str(bindir / "pg_ctl"), "-D", str(pgdata), "status"], capture_output=True, check=False
    )
    if status.returncode != 0:
        options = f"-k {socket_dir} -c listen_addresses=''"
        _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(pgdata),
                "-o",
                options,
                "-w",
                "-l",
                str(pgdata / "log"),
                "start",
            ]
        )
    return f"postgresql://postgres@/postgres?host={socket_dir}"


def _local_postgres_bin() -> Path | None:
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    return None


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["failed"]
        raise DatabaseUnavailable(f"{Path(argv[0]).name}: {last[0]}; set GATEWAY_DATABASE_URL")


async def wait_until_ready(url: str, config: Config, attempts: int = 50) -> None:
    for _ in range(attempts):
        try:
            conn = await connect(url, config)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return
    raise DatabaseUnavailable(f"the database at {redact(url)} does not answer")


def redact(url: str) -> str:
    """A database URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
