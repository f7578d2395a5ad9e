"""Finding the primary among several PostgreSQL hosts, and leaving one that is no
longer it.

`database.url` may name several hosts, as libpq takes them
(`postgresql://gw@db1:5432,db2:5432/gw?target_session_attrs=read-write`). libpq asks
them one after another, each within its connect timeout; asyncpg does too, but within
one timeout for all of them, so a primary that vanished without a reset (a host gone,
not just its process) takes the whole budget and the standby promoted meanwhile is
never asked. Here every host is asked at once, each within the connect timeout, and
the first to answer that matches `target_session_attrs` is kept: after a failover a
connection costs one round trip to the new primary, whatever the old one does.

A connection opened to the primary stays open when that server is demoted or fenced
(`default_transaction_read_only` turned on and reloaded); such a connection is
refused when taken from the pool (`PrimaryLost`) and replaced.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# What a connection must be for the gateway, which writes: libpq's names.
_WRITABLE = ("read-write", "primary")
_REASK_SECONDS = 0.25


class PrimaryLost(ConnectionError):
    """A pooled connection's server is read-only now (a standby, or fenced): the
    caller answers as it does when the database is down, and the pool reconnects."""


def hosts(url: str) -> list[str]:
    """The `host[:port]` entries of a URL's authority, in order (one for most URLs)."""
    netloc = urlsplit(url).netloc
    return netloc.rpartition("@")[2].split(",")


def each_host(url: str) -> list[str]:
    """The URL once per host it names, everything else kept."""
    parts = urlsplit(url)
    user, at, _ = parts.netloc.rpartition("@")
    return [urlunsplit(parts._replace(netloc=f"{user}{at}{host}")) for host in hosts(url)]


def wants_writable(url: str) -> bool:
    """Whether the URL asks for a writable server (`target_session_attrs`)."""
    asked = parse_qs(urlsplit(url).query).get("target_session_attrs", [""])
    return asked[-1] in _WRITABLE


def read_only(conn: asyncpg.Connection | Any) -> bool:
    """What the server last reported of itself (PostgreSQL ≥ 14 reports both settings
    when they change, so this costs no round trip)."""
    settings = conn.get_settings()
    return (
        getattr(settings, "default_transaction_read_only", "off") == "on"
        or getattr(settings, "in_hot_standby", "off") == "on"
    )


async def refuse_read_only(conn: PoolConnectionProxy[Any]) -> None:
    """The pool's `setup`: a connection whose server turned read-only is not used."""
    if read_only(conn):
        raise PrimaryLost("the database server is read-only now (demoted or fenced)")


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, asking every host of a multi-host URL at once."""
    urls = each_host(url)
    if len(urls) == 1:
        return await asyncpg.connect(url, **kwargs)
    return await _first([functools.partial(asyncpg.connect, one, **kwargs) for one in urls])


async def pool_connect(dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
    """`connect` as asyncpg's pool calls it (with its own `loop` argument)."""
    assert dsn is not None  # the pool is made from a URL
    kwargs.pop("loop", None)
    return await connect(dsn, **kwargs)


Opener = Callable[[], Awaitable[asyncpg.Connection]]


async def _first(openers: list[Opener]) -> asyncpg.Connection:
    """The first connection any opener gives; the other attempts are cancelled, or
    closed if they got one too (two primaries for a moment, or a target any server
    matches). A host that is not what the URL asks for (a standby) is asked again
    every `_REASK_SECONDS` while another has not answered yet: the standby may be
    promoted while the old primary's host keeps us waiting. All failing, the first
    failure is raised."""
    every: list[asyncio.Future[asyncpg.Connection]] = []
    pending: dict[asyncio.Future[asyncpg.Connection], Opener] = {}
    unanswered: set[asyncio.Future[asyncpg.Connection]] = set()

    def start(opener: Opener, delay: float = 0.0) -> asyncio.Future[asyncpg.Connection]:
        task = asyncio.ensure_future(_after(delay, opener))
        every.append(task)
        pending[task] = opener
        return task

    unanswered.update(start(opener) for opener in openers)
    failures: list[BaseException] = []
    chosen: asyncpg.Connection | None = None
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                opener = pending.pop(task)
                unanswered.discard(task)
                failure = task.exception()
                if failure is None:
                    chosen = task.result()
                    return chosen
                failures.append(failure)
                if isinstance(failure, asyncpg.TargetServerAttributeNotMatched) and unanswered:
                    start(opener, _REASK_SECONDS)
        raise failures[0]
    finally:
        for task in every:
            task.cancel()
        for result in await asyncio.gather(*every, return_exceptions=True):
            if isinstance(result, asyncpg.Connection) and result is not chosen:
                result.terminate()


async def _after(delay: float, opener: Opener) -> asyncpg.Connection:
    if delay:
        await asyncio.sleep(delay)
    return await opener()
