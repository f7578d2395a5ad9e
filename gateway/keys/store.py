"""Keys and memberships as the request path sees them: PostgreSQL behind TTL caches.

Cache-aside, as Kong's key-auth does it: a hit makes no query; unknown keys are
cached negatively; concurrent misses for one key share one query (single
flight). Invalidations (LISTEN/NOTIFY) drop entries; the TTL is the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, TypeVar

import asyncpg
from lru import LRU

from gateway.credits.refill import Refill
from gateway.foundation.config import Cache
from gateway.foundation.database import UNAVAILABLE, bounded
from gateway.foundation.soon import Later, Soon
from gateway.keys.networks import NetworkLog
from gateway.keys.principal import CreditAccount, Network, Principal
from gateway.policy.ratelimits import RateLimit
from gateway.policy.scopes import Catalogue
from gateway.tracing.spans import Tracing

Clock = Callable[[], float]
Status = Literal["active", "expired", "revoked", "disabled"]
T = TypeVar("T")

# After a failed query the database counts as down: lookups answer 503 at once rather
# than each waiting out a timeout, until a probe this often finds it back.
_PROBE_SECONDS = 0.5
_TABLES = {"key": "api_keys", "membership": "memberships"}  # what each lookup reads
# A key with a balance of its own spends it (a rotated key, its successor's); one
# without spends its user's pool when there is one (§21), else nothing: unlimited.
_SELECT_KEY = (
    "SELECT k.id::text AS id, k.user_id, k.name, k.scopes, k.enabled, k.allowed_cidrs,"
    " k.rate_limits, k.meta,"
    " (CASE WHEN k.credits_remaining IS NOT NULL THEN coalesce(k.rotated_to, k.id)"
    " ELSE p.id END)::text AS credit_account,"
    " k.credits_remaining IS NULL AND p.id IS NOT NULL AS pooled,"
    " CASE WHEN k.credits_remaining IS NOT NULL THEN k.credits_refill"
    " ELSE p.credits_refill END AS credits_refill,"
    " extract(epoch FROM k.expires_at)::float8 AS expires_at,"
    " extract(epoch FROM k.created_at)::float8 AS created_at,"
    " extract(epoch FROM k.revoked_at)::float8 AS revoked_at"
    " FROM api_keys AS k LEFT JOIN user_credits AS p ON p.user_id = k.user_id"
)
_KEY_BY_HASH = _SELECT_KEY + " WHERE k.key_hash = $1"
_KEY_BY_ID = _SELECT_KEY + " WHERE k.id = $1::uuid"


async def _ping(conn: Any) -> object:
    return await conn.fetchval("SELECT 1")


class StoreUnavailable(Exception):
    """The database could not answer; the caller answers 503."""


class Observer(Protocol):
    """What the store reports, for metrics."""

    def cache_event(self, cache: str, event: str) -> None: ...

    def query_seconds(self, query: str, seconds: float) -> None: ...


class _Quiet:
    def cache_event(self, cache: str, event: str) -> None:
        pass

    def query_seconds(self, query: str, seconds: float) -> None:
        pass


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    user_id: str
    name: str
    scopes: tuple[str, ...]  # as granted
    effective: frozenset[str]  # closed under `implies`
    expires_at: float | None
    revoked_at: float | None  # may lie in the future (rotation grace)
    enabled: bool = True
    networks: tuple[Network, ...] = ()  # allowed_cidrs
    limits: dict[str, RateLimit] | None = None  # per-key numbers of `by: key` limits
    credits: CreditAccount | None = None  # None: unlimited
    meta: dict[str, Any] | None = None  # given to upstreams (§21)
    created_at: float = 0.0  # its lifetime runs from here to `expires_at` (§21)
    # Who a request with this key is: built once per load, not once per request.
    principal: Principal = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        scope_header = " ".join(sorted(self.effective))
        principal = Principal(
            self.user_id,
            self.id,
            self.effective,
            "api_key",
            scope_header,
            self.networks,
            rfc3339(self.expires_at) if self.expires_at is not None else None,
            self.limits,
            self.credits,
            self.meta,
            math.inf if self.expires_at is None else self.expires_at - self.created_at,
        )
        object.__setattr__(self, "principal", principal)

    def status(self, now: float) -> Status:
        """Why the key cannot be used now, if it cannot: revoked, expired, disabled."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if not self.enabled:
            return "disabled"
        return "active"


def key_limits(stored: str | dict[str, Any] | None) -> dict[str, RateLimit] | None:
    """A key's `rate_limits` column as limits (asyncpg gives jsonb as text)."""
    found = json.loads(stored) if isinstance(stored, str) else stored
    if not found:
        return None
    return {
        name: RateLimit(name, int(n["limit"]), float(n["per_seconds"]), int(n["burst"]), "key")
        for name, n in found.items()
    }


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_MISSING: Final = object()  # Final: a C static when compiled, not a globals lookup


class Missing(enum.Enum):
    """Not in the cache (a database query would tell)."""

    MISSING = "missing"


MISSING = Missing.MISSING


class _Cache:
    """A TTL cache with single flight and a generation guard against stale fills.

    Bounded by `maxsize`, least recently used first out (lru-dict, in C); each entry
    carries its expiry, read from the injected clock. A hit is one native lookup: the
    interpreted `cachetools.TTLCache` it replaces cost about 4,400 instructions a hit,
    and a request makes one or two. An expired entry stays until it is overwritten or
    pushed out: memory stays bounded by `maxsize` all the same."""

    def __init__(self, name: str, maxsize: int, ttl: float, clock: Clock, observer: Observer):
        self.name = name
        self.ttl = ttl
        self.clock = clock
        self.observer = observer
        # The callback runs only for an entry pushed out to make room.
        self.entries: LRU[Hashable, tuple[Any, float]] = LRU(maxsize, self._pushed_out)
        self.inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self.generation = 0
        # Counted here and taken by the metrics in batches (`KeyStore.lookups`): an
        # observer call per lookup cost 1,400 instructions, a request makes one or two.
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any:
        """The value, or `_MISSING` when absent or expired."""
        entry = self.entries.get(key)
        if entry is None or entry[1] <= self.clock():
            self.misses += 1
            return _MISSING
        self.hits += 1
        return entry[0]

    def holds(self, key: Hashable) -> bool:
        """Whether a live entry is cached, without counting a lookup."""
        entry = self.entries.get(key)
        return entry is not None and entry[1] > self.clock()

    def put(self, key: Hashable, value: Any) -> None:
        self.entries[key] = (value, self.clock() + self.ttl)

    def _pushed_out(self, _key: Hashable, entry: tuple[Any, float]) -> None:
        # An eviction says the cache is too small: an entry that had expired anyway
        # (cachetools dropped those before making room) is not one.
        if entry[1] > self.clock():
            self.observer.cache_event(self.name, "eviction")

    def take_counts(self) -> list[tuple[str, str, int]]:
        counts = [(self.name, "hit", self.hits), (self.name, "miss", self.misses)]
        self.hits = self.misses = 0
        return counts

    async def fill(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        pending = self.inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        generation = self.generation
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self.inflight[key]
        # An invalidation that arrived during the query may concern this very row;
        # "not found" (None) is for the caller's negative cache, with its own TTL.
        if generation == self.generation and value is not None:
            self.put(key, value)
        future.set_result(value)
        return value

    def drop(self, key: Hashable) -> None:
        self.generation += 1
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()


class KeyStore:
    """Looks up keys (by hash or id) and memberships, caching both."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        catalogue: Catalogue,
        cache: Cache,
        *,
        clock: Clock = time.time,
        observer: Observer | None = None,
        tracing: Tracing | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._tracing = tracing
        self._catalogue = catalogue
        self._clock = clock
        self._observer = observer or _Quiet()
        size, ttl = cache.max_entries, cache.ttl_seconds
        self._by_hash = _Cache("key", size, ttl, clock, self._observer)
        self._by_id = _Cache("key_id", size, ttl, clock, self._observer)
        self._unknown = _Cache(
            "unknown_key", size, cache.negative_ttl_seconds, clock, self._observer
        )
        self._members = _Cache("membership", size, ttl, clock, self._observer)
        self._timeout = timeout
        self._probe: asyncio.Task[None] | None = None  # while the database is down
        self.last_used: dict[str, tuple[float, str]] = {}  # key id → (when, from where)
        self.networks: NetworkLog | None = None  # the new-network notice, when on
        self.queries = 0  # counted for tests and benchmarks: a hit makes none

    def now(self) -> float:
        return self._clock()

    def cached_by_hash(self, digest: bytes) -> KeyRecord | Missing | None:
        """The key if cached (None when cached as unknown), else `MISSING`: a hit, the
        common case, answered without a coroutine."""
        record = self._by_hash.get(digest)
        if record is not _MISSING:
            return record  # type: ignore[no-any-return]
        if self._unknown.holds(digest):
            return None
        return MISSING

    async def by_hash(self, digest: bytes) -> KeyRecord | None:
        record = self._by_hash.get(digest)
        if record is not _MISSING:
            return record  # type: ignore[no-any-return]
        if self._unknown.holds(digest):
            return None
        record = await self._by_hash.fill(digest, lambda: self._load_key(_KEY_BY_HASH, digest))
        if record is None:
            self._unknown.put(digest, True)
        return record  # type: ignore[no-any-return]

    async def by_id(self, key_id: str) -> KeyRecord | None:
        record = self._by_id.get(key_id)
        if record is not _MISSING:
            return record  # type: ignore[no-any-return]
        return await self._by_id.fill(key_id, lambda: self._load_key(_KEY_BY_ID, key_id))

    def memberships(self, user_id: str) -> Soon[frozenset[tuple[str, str]]]:
        """The user's memberships: at once when cached, else a `Later` (raising
        `StoreUnavailable` when the database cannot answer)."""
        found = self._members.get(user_id)
        if found is not _MISSING:
            return found  # type: ignore[no-any-return]
        return Later(self._fill_memberships(user_id))

    def _fill_memberships(self, user_id: str) -> Awaitable[frozenset[tuple[str, str]]]:
        # A function of its own: compiled, a function holding a lambda allocates the
        # lambda's environment on every call, the hit included (about 1,000 instructions).
        return self._members.fill(user_id, lambda: self._load_memberships(user_id))

    def cache_sizes(self) -> dict[str, int]:
        """Entries held, by cache (each is bounded by `cache.max_entries`)."""
        caches = (self._by_hash, self._by_id, self._unknown, self._members)
        return {cache.name: len(cache.entries) for cache in caches}

    def cached_entries(self) -> int:
        return sum(self.cache_sizes().values())

    def lookups(self) -> list[tuple[str, str, int]]:
        """(cache, "hit" or "miss", count) since the last call: what the metrics take
        (`Metrics.count_lookups`), before every scrape."""
        caches = (self._by_hash, self._by_id, self._members)
        return [count for cache in caches for count in cache.take_counts()]

    def touch(self, key_id: str, client: str) -> None:
        """Note a use, from the client address; `flush_last_used` writes them in one batch."""
        self.last_used[key_id] = (self._clock(), client)
        networks = self.networks
        if networks is not None:
            networks.note(key_id, client)

    def invalidate_key(self, key_id: str, digest: bytes | None) -> None:
        self._by_id.drop(key_id)
        if digest is not None:
            self._by_hash.drop(digest)
            self._unknown.drop(digest)
        else:
            self._by_hash.clear()

    def invalidate_user(self, user_id: str) -> None:
        self._members.drop(user_id)

    def flush(self) -> None:
        for cache in (self._by_hash, self._by_id, self._unknown, self._members):
            cache.clear()

    async def _load_key(self, sql: str, value: object) -> KeyRecord | None:
        row = await self._query("key", lambda conn: conn.fetchrow(sql, value))
        if row is None:
            return None
        return KeyRecord(
            id=row["id"],
            user_id=row["user_id"],
            name=row["name"],
            scopes=tuple(row["scopes"]),
            effective=self._catalogue.closure(row["scopes"]),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            enabled=row["enabled"],
            networks=tuple(row["allowed_cidrs"]),
            limits=key_limits(row["rate_limits"]),
            credits=(
                CreditAccount(
                    row["credit_account"], Refill.stored(row["credits_refill"]), row["pooled"]
                )
                if row["credit_account"] is not None
                else None
            ),
            meta=None if row["meta"] is None else json.loads(row["meta"]),
            created_at=row["created_at"],
        )

    async def _load_memberships(self, user_id: str) -> frozenset[tuple[str, str]]:
        sql = "SELECT resource_type, resource_id FROM memberships WHERE user_id = $1"
        rows = await self._query("membership", lambda conn: conn.fetch(sql, user_id))
        return frozenset((row["resource_type"], row["resource_id"]) for row in rows)

    async def _query(self, name: str, run: Callable[[Any], Awaitable[T]]) -> T:
        if self._probe is not None:
            raise StoreUnavailable(name)  # known down: 503 at once, the probe looks
        table = _TABLES.get(name)
        if self._tracing is None or table is None:
            return await self._run(name, run)
        attributes = {
            "db.system.name": "postgresql",
            "db.operation.name": "SELECT",
            "db.collection.name": table,
        }
        with self._tracing.client_span(f"SELECT {table}", attributes):
            return await self._run(name, run)  # a failure marks the span as an error

    async def _run(self, name: str, run: Callable[[Any], Awaitable[T]]) -> T:
        started = time.perf_counter()
        self.queries += 1
        try:
            return await self._bounded(run)
        except UNAVAILABLE:
            self._went_down()
            raise StoreUnavailable(name) from None
        finally:
            self._observer.query_seconds(name, time.perf_counter() - started)

    async def _bounded(self, run: Callable[[Any], Awaitable[T]]) -> T:
        return await bounded(self._pool, run, self._timeout)

    def _went_down(self) -> None:
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._until_back())

    async def _until_back(self) -> None:
        """While the database is down, one query every `_PROBE_SECONDS` looks for it,
        on new connections."""
        await self.replace_connections()
        while True:
            await asyncio.sleep(_PROBE_SECONDS)
            try:
                await self._bounded(_ping)
            except UNAVAILABLE:
                continue
            self._probe = None
            return

    async def replace_connections(self) -> None:
        """Open new pooled connections as they are next taken (the old ones closed
        meanwhile): the server they lead to may be gone without a word, each costing a
        timeout, or no longer the primary."""
        await self._pool.expire_connections()

    @property
    def database_down(self) -> bool:
        return self._probe is not None

    async def close(self) -> None:
        """Stop looking for the database (at shutdown)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def flush_last_used(self) -> int:
        """Write the batched last-use times in one statement; returns how many."""
        pending, self.last_used = self.last_used, {}
        if not pending:
            return 0
        sql = (
            "UPDATE api_keys AS k SET last_used_at = to_timestamp(u.t), last_used_address = u.a"
            " FROM unnest($1::uuid[], $2::float8[], $3::inet[]) AS u(id, t, a)"
            " WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(u.t))"
        )
        ids = list(pending)
        times = [when for when, _ in pending.values()]
        addresses = [_address_or_none(client) for _, client in pending.values()]
        try:
            await self._query("last_used", lambda c: c.execute(sql, ids, times, addresses))
        except StoreUnavailable:
            # Keep them for the next round; newer uses win.
            self.last_used = {**pending, **self.last_used}
            return 0
        return len(pending)


def _address_or_none(client: str) -> str | None:
    """An IP address as PostgreSQL's `inet` takes it; None for anything else (a listener
    on a Unix socket has no client address), which would fail the whole batch."""
    try:
        return str(ipaddress.ip_address(client))
    except ValueError:
        return None
