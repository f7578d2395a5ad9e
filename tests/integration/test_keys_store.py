"""The key cache against a real PostgreSQL: hits make no query, misses share one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from gateway.audit.events import Actor
from gateway.foundation.config import Cache, Config
from gateway.keys import format as key_format
from gateway.keys import management, validation
from gateway.keys.invalidation import Listener
from gateway.keys.store import MISSING, KeyStore
from gateway.observability.metrics import Metrics
from gateway.policy.scopes import Catalogue

CATALOGUE = Catalogue({name: d.implies for name, d in Config().scopes.items()})


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


async def _create(pool: asyncpg.Pool, scopes: list[str], **extra: object) -> dict[str, object]:
    body = {"user_id": "u-store", "name": "n", "scopes": scopes, **extra}
    spec = validation.validate_key(body, CATALOGUE, datetime.now(UTC))
    assert not isinstance(spec, list)
    async with pool.acquire() as conn:
        return await management.create_key(conn, spec, "gwk", actor=Actor("cli"))


async def test_hit_makes_no_query_and_concurrent_misses_make_one(pool: asyncpg.Pool) -> None:
    created = await _create(pool, ["projects:write"])
    digest = key_format.digest(str(created["key"]))
    store = KeyStore(pool, CATALOGUE, Cache())
    records = await asyncio.gather(*(store.by_hash(digest) for _ in range(50)))
    assert store.queries == 1
    assert {r.id for r in records if r} == {created["id"]}
    assert records[0] is not None and records[0].effective == {"projects:write", "projects:read"}
    for _ in range(100):
        await store.by_hash(digest)
    assert store.queries == 1


async def test_unknown_keys_are_cached_negatively_for_their_ttl(pool: asyncpg.Pool) -> None:
    clock = Clock()
    store = KeyStore(pool, CATALOGUE, Cache(negative_ttl_seconds=5), clock=clock)
    digest = key_format.digest(key_format.generate("gwk"))
    assert await store.by_hash(digest) is None
    assert await store.by_hash(digest) is None
    assert store.queries == 1
    clock.now += 6
    assert await store.by_hash(digest) is None
    assert store.queries == 2


async def test_expiry_is_checked_on_every_request_not_on_fill(pool: asyncpg.Pool) -> None:
    clock = Clock()
    created = await _create(pool, ["me:read"], expires_in_days=1)
    store = KeyStore(pool, CATALOGUE, Cache(ttl_seconds=10**9), clock=clock)
    record = await store.by_hash(key_format.digest(str(created["key"])))
    assert record is not None and record.status(clock()) == "active"
    clock.now += 86400 + 1
    cached = await store.by_hash(key_format.digest(str(created["key"])))
    assert cached is record and cached.status(clock()) == "expired"
    assert store.queries == 1


async def test_an_invalidation_during_a_fill_is_not_overwritten(pool: asyncpg.Pool) -> None:
    created = await _create(pool, ["me:read"])
    digest = key_format.digest(str(created["key"]))
    store = KeyStore(pool, CATALOGUE, Cache())
    pending = asyncio.ensure_future(store.by_hash(digest))
    await asyncio.sleep(0)  # the query is in flight
    store.invalidate_key(str(created["id"]), digest)
    await pending
    await store.by_hash(digest)
    assert store.queries == 2


async def test_last_used_is_written_in_one_batch(pool: asyncpg.Pool) -> None:
    first, second = await _create(pool, ["me:read"]), await _create(pool, ["me:read"])
    store = KeyStore(pool, CATALOGUE, Cache())
    for _ in range(100):
        store.touch(str(first["id"]), "192.0.2.1")
        store.touch(str(second["id"]), "")  # no client address (a Unix socket)
    before = store.queries
    assert await store.flush_last_used() == 2
    assert store.queries == before + 1
    async with pool.acquire() as conn:
        listed = await management.get_key(conn, str(first["id"]))
        other = await management.get_key(conn, str(second["id"]))
    assert listed["last_used_at"] is not None and listed["last_used_address"] == "192.0.2.1"
    assert other["last_used_at"] is not None and other["last_used_address"] is None


class CacheEvents:
    """The store's observer, keeping its cache events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def cache_event(self, cache: str, event: str) -> None:
        self.events.append((cache, event))

    def query_seconds(self, query: str, seconds: float) -> None:
        pass


async def test_a_full_cache_evicts_and_counts_it(pool: asyncpg.Pool) -> None:
    observer = CacheEvents()
    events = observer.events
    store = KeyStore(pool, CATALOGUE, Cache(max_entries=2), observer=observer)
    for _ in range(3):
        assert await store.by_hash(key_format.digest(key_format.generate("gwk"))) is None
    assert events.count(("unknown_key", "eviction")) == 1
    created = [await _create(pool, ["me:read"]) for _ in range(3)]
    for key in created:
        await store.by_hash(key_format.digest(str(key["key"])))
    assert events.count(("key", "eviction")) == 1


async def test_an_expired_entry_pushed_out_is_not_an_eviction(pool: asyncpg.Pool) -> None:
    """An eviction says the cache is too small; an entry past its TTL says nothing."""
    observer, now = CacheEvents(), [1_000.0]
    settings = Cache(max_entries=2)
    store = KeyStore(pool, CATALOGUE, settings, clock=lambda: now[0], observer=observer)
    for _ in range(2):
        assert await store.by_hash(key_format.digest(key_format.generate("gwk"))) is None
    now[0] += settings.negative_ttl_seconds + 1
    for _ in range(2):  # each pushes out one of the two expired entries
        assert await store.by_hash(key_format.digest(key_format.generate("gwk"))) is None
    assert store.cache_sizes()["unknown_key"] == 2
    assert ("unknown_key", "eviction") not in observer.events
    assert await store.by_hash(key_format.digest(key_format.generate("gwk"))) is None
    assert observer.events.count(("unknown_key", "eviction")) == 1  # a live one went


async def test_hits_and_misses_are_counted_and_taken_by_the_metrics(pool: asyncpg.Pool) -> None:
    store = KeyStore(pool, CATALOGUE, Cache())
    metrics = Metrics()
    metrics.count_lookups(store.lookups)
    created = await _create(pool, ["me:read"])
    digest = key_format.digest(str(created["key"]))
    assert await store.by_hash(digest) is not None  # a miss, then filled
    for _ in range(3):
        assert store.cached_by_hash(digest) is not MISSING
    counted = {(cache, kind): n for cache, kind, n in store.lookups()}
    assert counted[("key", "hit")] == 3 and counted[("key", "miss")] == 1
    assert {n for _, _, n in store.lookups()} == {0}  # taken: counted anew
    store.cached_by_hash(digest)
    metrics.drain()
    exposed = metrics.registry.get_sample_value(
        "gateway_cache_events_total", {"cache": "key", "event": "hit"}
    )
    assert exposed == 1


async def test_a_writer_waits_until_its_own_process_has_applied_the_change(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """NOTIFY reaches this process's listener a moment after the commit; `caught_up`
    returns only once it has, so the writer's next lookup cannot hit the dropped entry."""
    store = KeyStore(pool, CATALOGUE, Cache())
    listener = Listener(database_url, store, Metrics())
    listening = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.connected.wait(), 10)
    try:
        for _ in range(20):
            created = await _create(pool, ["projects:read"])
            digest = key_format.digest(str(created["key"]))
            assert await store.by_hash(digest) is not None
            async with pool.acquire() as conn:
                await management.revoke_key(conn, str(created["id"]), actor=Actor("cli"))
                await listener.caught_up(conn)
                assert store.cached_by_hash(digest) is MISSING  # before the pool's reset query
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
