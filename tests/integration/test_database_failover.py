"""Several PostgreSQL hosts in `database.url` (§22): every host asked at once, so a
host that keeps us waiting does not hide one that answers. The full failover (a
standby promoted, the primary's host gone) runs in `tests/cluster/test_failover.py`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.foundation import failover
from gateway.foundation.config import Config, Database
from gateway.foundation.database import create_pool


@pytest.fixture
def silent_host() -> Iterator[str]:
    """An address that accepts TCP connections and never says a word (as a host whose
    server froze; a vanished host costs the same wait)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _with_hosts(url: str, *hosts: str, query: str = "") -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{user}@{','.join(hosts)}", query=query).geturl()


def test_a_url_is_split_into_one_url_per_host() -> None:
    url = "postgresql://gw:s3cret@db1:5432,[::1]:5433,db3/gw?target_session_attrs=read-write"
    assert failover.hosts(url) == ["db1:5432", "[::1]:5433", "db3"]
    assert failover.each_host(url) == [
        "postgresql://gw:s3cret@db1:5432/gw?target_session_attrs=read-write",
        "postgresql://gw:s3cret@[::1]:5433/gw?target_session_attrs=read-write",
        "postgresql://gw:s3cret@db3/gw?target_session_attrs=read-write",
    ]
    assert failover.each_host("postgresql://localhost/gw") == ["postgresql://localhost/gw"]
    assert failover.wants_writable(url)
    assert failover.wants_writable("postgresql://a,b/gw?target_session_attrs=primary")
    assert not failover.wants_writable("postgresql://a,b/gw")
    assert not failover.wants_writable("postgresql://a,b/gw?target_session_attrs=any")


async def test_a_silent_first_host_does_not_delay_the_one_that_answers(
    database_url: str, silent_host: str
) -> None:
    server = urlsplit(database_url).netloc.rpartition("@")[2]
    url = _with_hosts(database_url, silent_host, server, query="target_session_attrs=read-write")
    started = time.monotonic()
    conn = await failover.connect(url, timeout=5)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert time.monotonic() - started < 1.5
    # asyncpg alone spends its one timeout on the first host: what this module is for.
    with pytest.raises(TimeoutError):
        await asyncpg.connect(url, timeout=1)


async def test_the_pool_takes_connections_the_same_way(database_url: str, silent_host: str) -> None:
    server = urlsplit(database_url).netloc.rpartition("@")[2]
    url = _with_hosts(database_url, silent_host, server, query="target_session_attrs=read-write")
    config = Config(database=Database(url=url, min_pool_size=2))
    started = time.monotonic()
    pool = await create_pool(url, config)
    try:
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
    assert time.monotonic() - started < 3


async def test_no_host_answering_raises_the_first_failure_within_the_timeout(
    silent_host: str,
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    url = f"postgresql://postgres@{refused},{silent_host}/test"
    started = time.monotonic()
    with pytest.raises(OSError):
        await failover.connect(url, timeout=1)
    assert time.monotonic() - started < 2
