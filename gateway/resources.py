"""What the gateway runs on, each opened as an async context manager by the composition
root (`runtime.Gateway`) in this order and closed in reverse: database, key store,
invalidation listener, credit shares, usage counts, webhook delivery, policies, rate limiter, then the request path's own parts
(signer, telemetry, upstream pools, the HTTP session for WebSockets and JWKS).
Each sets what it opened on the `Resources` and cleans up only what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

import aiohttp
import asyncpg

from gateway.credits import balance, pools, shares
from gateway.credits.ledger import CreditLedger
from gateway.foundation import database
from gateway.foundation.config import Config, ConfigError
from gateway.foundation.readiness import Readiness
from gateway.keys.invalidation import Listener
from gateway.keys.networks import NetworkLog
from gateway.keys.organizations import OrganizationPolicies
from gateway.keys.store import Clock, KeyStore
from gateway.observability.accesslog import AccessLog
from gateway.observability.metrics import Metrics
from gateway.policy.reloader import ActivePolicies
from gateway.policy.scopes import Catalogue
from gateway.ratelimit.limiter import Backend, RateLimiter, sweep_periodically
from gateway.ratelimit.local import LocalBackend
from gateway.ratelimit.redis_client import RedisClient, client_for
from gateway.ratelimit.shared import SharedBackend
from gateway.tls.contexts import ServerTLS
from gateway.tokens import signing
from gateway.tokens.actor import Signer
from gateway.tracing.spans import Tracing
from gateway.usage.counter import UsageCounter, prune
from gateway.webhooks.delivery import Deliverer
from gateway.webhooks.scan import scan

log = logging.getLogger("gateway")
STOP_SECONDS = 5.0
Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Options:
    """How this process runs, beside what the configuration file says."""

    migrate: bool = True
    handle_sighup: bool = False
    reuse_port: bool = False
    clock: Clock = time.time
    last_used_interval: float = 30.0
    listener_check_interval: float = 0.5
    # pgserver's cleanup mode: None leaves the embedded server running for the CLI.
    embedded_cleanup: str | None = None
    # Where the access log goes (stdout's bytes when None); tests pass a buffer.
    access_log: BinaryIO | None = None
    log_requests: bool = True
    freeze_gc: bool = False  # a process-wide setting: serve sets it, tests do not
    admin: bool = True  # serve the admin listener (the proxy runs without it)


class Resources:
    """What the gateway runs on, as the openers below set it while starting (the
    composition root, `runtime.Gateway`, is one): each opener reads what those before
    it opened, and nothing else."""

    # Set while starting, by the resource that opens each.
    database_url: str
    pool: asyncpg.Pool
    store: KeyStore
    tracing: Tracing | None
    listener: Listener
    organizations: OrganizationPolicies
    policies: ActivePolicies
    limiter: RateLimiter
    ledger: CreditLedger
    pools: CreditLedger  # users' credit pools (§21)
    usage: UsageCounter
    access_log: AccessLog | None
    http: aiohttp.ClientSession

    def __init__(self, config: Config, options: Options | None = None) -> None:
        self.config = config
        self.options = options or Options()
        self.scopes = Catalogue({name: d.implies for name, d in config.scopes.items()})
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.server_tls: list[ServerTLS] = []
        self.proxy_address: Address | None = None
        self.decisions_address: Address | None = None
        self.admin_address: Address | None = None

    async def caught_up(self) -> None:
        """Wait until this process's caches reflect every change committed so far: the
        admin API and the page answer a change only then, so the caller's next request
        through this process sees it (other processes within the NOTIFY delay)."""
        async with self.pool.acquire() as conn:
            await self.listener.caught_up(conn)

    def reload_tls(self) -> None:
        """New certificate files for new handshakes (SIGHUP, or the files changed)."""
        for tls in self.server_tls:
            tls.reload()


async def stop_background(*tasks: asyncio.Task[None], within: float = STOP_SECONDS) -> None:
    """Stop background loops. Bounded: a loop whose library swallowed the cancellation
    must not hold shutdown forever (it is logged and left to die with the process)."""
    for task in tasks:
        task.cancel()
    _, running = await asyncio.wait(tasks, timeout=within)
    for task in running:
        log.error("background task %s did not stop within %s s", task.get_name(), within)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.result()  # a loop that failed says so, as awaiting it did


@contextlib.asynccontextmanager
async def open_database(gw: Resources) -> AsyncIterator[None]:
    config, options = gw.config, gw.options
    loop = asyncio.get_running_loop()
    url = await loop.run_in_executor(None, database.database_url, config, options.embedded_cleanup)
    await database.wait_until_ready(url, config)
    if options.migrate and config.database.migrate_on_start:
        conn = await database.connect(url, config)
        try:
            await database.migrate(conn, config.database.migration_lock_timeout_seconds)
        finally:
            await conn.close()
    gw.database_url = url
    gw.pool = await database.create_pool(url, config)
    try:
        yield
    finally:
        await gw.pool.close()


@contextlib.asynccontextmanager
async def open_tracing(gw: Resources) -> AsyncIterator[None]:
    """Traces (§19) when `tracing.enabled`; what is queued is sent when the process
    stops (after the listeners: the last requests' spans are in)."""
    settings = gw.config.tracing
    if not settings.enabled:
        gw.tracing = None
        yield
        return
    metrics = gw.metrics
    gw.tracing = Tracing(settings, metrics.spans_dropped, metrics.spans_exported)
    log.info("tracing: %s of new traces to %s", settings.sample_ratio, settings.otlp_endpoint)
    try:
        yield
    finally:
        await gw.tracing.close()


@contextlib.asynccontextmanager
async def open_store(gw: Resources) -> AsyncIterator[None]:
    options = gw.options
    store = KeyStore(
        gw.pool,
        gw.scopes,
        gw.config.cache,
        clock=options.clock,
        observer=gw.metrics,
        tracing=gw.tracing,
        timeout=gw.config.database.command_timeout_seconds,
    )
    gw.store = store
    gw.metrics.count_lookups(store.lookups)
    gw.readiness.database_down = lambda: store.database_down
    notice = gw.config.key_policy.new_network_notice
    if notice.enabled:
        store.networks = NetworkLog(notice, options.clock)
    seconds = gw.config.database.command_timeout_seconds

    async def flush() -> None:
        await store.flush_last_used()
        if store.networks is not None:
            await store.networks.flush(gw.pool, seconds)

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(options.last_used_interval)
            await flush()

    tasks = [asyncio.create_task(flush_periodically())]
    if options.freeze_gc:
        tasks.append(asyncio.create_task(_settle_caches(store)))
    try:
        yield
    finally:
        await stop_background(*tasks)
        await flush()
        await store.close()


async def _settle_caches(store: KeyStore, interval: float = 5.0, growth: int = 5000) -> None:
    """Freeze grown caches out of the collector's full passes (as at start-up).

    40,000 cached keys are some 200,000 objects a full collection walks: a 60 ms
    stall, about once a second under load (the asyncio p99). Cache entries form no
    reference cycles, so once frozen they are still freed when evicted.
    """
    settled = store.cached_entries()
    while True:
        await asyncio.sleep(interval)
        size = store.cached_entries()
        if size - settled >= growth:
            gc.collect()
            gc.freeze()
        if size - settled >= growth or size < settled:
            settled = size


@contextlib.asynccontextmanager
async def open_invalidation(gw: Resources) -> AsyncIterator[None]:
    listener = Listener(
        gw.database_url, gw.store, gw.metrics, check_interval=gw.options.listener_check_interval
    )
    gw.listener = listener
    task = asyncio.create_task(listener.run())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(listener.connected.wait(), 10)
    try:
        yield
    finally:
        await stop_background(task)


@contextlib.asynccontextmanager
async def open_organization_policies(gw: Resources) -> AsyncIterator[None]:
    """Each organization's key policy, in memory: read at start, changed by NOTIFY,
    read again when the listener may have missed a change."""
    organizations = OrganizationPolicies()
    await organizations.load(gw.pool, gw.config.database.command_timeout_seconds)
    gw.organizations = organizations

    def changed(payload: str | None) -> None:
        if payload is None:
            organizations.reload_soon(gw.pool)
        else:
            organizations.changed(payload)

    gw.listener.organization_policy = changed
    try:
        yield
    finally:
        await organizations.close()


@contextlib.asynccontextmanager
async def open_credits(gw: Resources) -> AsyncIterator[None]:
    """This process's shares of keys' credit balances: reported and renewed while it
    runs (with the sweep of dead holders' shares and the refills), given back when it
    stops — after the listeners, so no request in flight still spends."""
    seconds = gw.config.database.command_timeout_seconds
    ledger = CreditLedger(gw.pool, gw.config.credits, timeout=seconds)
    pooled = CreditLedger(gw.pool, gw.config.credits, timeout=seconds, kind=shares.USERS)
    gw.ledger, gw.pools = ledger, pooled

    def changed(account: str | None) -> None:  # ids are UUIDs: a key's or a pool's
        ledger.changed(account)
        pooled.changed(account)

    gw.listener.credits_changed = changed

    async def refill() -> int:
        return await database.bounded(gw.pool, balance.refill_due, seconds)

    async def refill_pools() -> int:
        return await database.bounded(gw.pool, pools.refill_due, seconds)

    tasks = [asyncio.create_task(ledger.run(refill)), asyncio.create_task(pooled.run(refill_pools))]
    try:
        yield
    finally:
        for task in tasks:
            await stop_background(task)
        for spending in (ledger, pooled):
            try:
                await spending.give_back()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("credits: could not give shares back (they return in %s s): %s",
                            gw.config.credits.lease_seconds, exc.__class__.__name__)  # fmt: skip


@contextlib.asynccontextmanager
async def open_usage(gw: Resources) -> AsyncIterator[None]:
    """Usage counts, written every `usage.flush_seconds` and when the process stops
    (after the listeners: the last requests are counted); old hours pruned hourly."""
    settings = gw.config.usage
    counter = UsageCounter(dropped=gw.metrics.usage_dropped.inc)
    gw.usage = counter

    async def flush_periodically() -> None:
        pruned = 0.0
        while True:
            await asyncio.sleep(settings.flush_seconds)
            await counter.flush(gw.pool, gw.config.database.command_timeout_seconds)
            if time.monotonic() - pruned > 3600:
                pruned = time.monotonic()
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    async with gw.pool.acquire() as conn:
                        await prune(conn, settings.retention_days)

    task = asyncio.create_task(flush_periodically())
    try:
        yield
    finally:
        await stop_background(task)
        await counter.flush(gw.pool, gw.config.database.command_timeout_seconds)


@contextlib.asynccontextmanager
async def open_webhooks(gw: Resources) -> AsyncIterator[None]:
    """Delivery of the outbox (woken by NOTIFY, else every poll), and the scan for
    time-driven events (one process at a time across hosts)."""
    settings = gw.config.webhooks
    deliverer = Deliverer(gw.pool, settings, gw.metrics)
    gw.listener.webhooks_due = deliverer.wake

    async def scan_periodically() -> None:
        while True:
            await asyncio.sleep(settings.scan_interval_seconds)
            try:
                async with gw.pool.acquire() as conn:
                    await scan(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhooks: scan failed: %s", exc.__class__.__name__)

    tasks = [asyncio.create_task(deliverer.run()), asyncio.create_task(scan_periodically())]
    try:
        yield
    finally:
        await stop_background(*tasks)


@contextlib.asynccontextmanager
async def open_policies(gw: Resources) -> AsyncIterator[None]:
    config = gw.config
    policies = ActivePolicies(
        config.resolve(config.policies.dir), gw.scopes, frozenset(config.upstreams), gw.metrics
    )
    gw.policies = policies
    stop = asyncio.Event()
    watcher = asyncio.create_task(policies.watch(stop)) if config.policies.reload else None
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        gw.reload_tls()  # new certificate files too
        task = asyncio.create_task(policies.reload_off_loop())
        pending.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(pending.discard)

    if gw.options.handle_sighup:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        yield
    finally:
        if gw.options.handle_sighup:
            loop.remove_signal_handler(signal.SIGHUP)
        stop.set()
        if watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


@contextlib.asynccontextmanager
async def open_rate_limits(gw: Resources) -> AsyncIterator[None]:
    settings = gw.config.rate_limiting
    local = LocalBackend(time.monotonic)
    backend: Backend = local
    client: RedisClient | None = None
    tasks = [asyncio.create_task(sweep_periodically(local))]
    if settings.backend == "redis":
        assert settings.redis_url is not None
        # Short timeouts: a dead Redis must fail fast into on_backend_error.
        client = client_for(settings.redis_url, timeout=0.25)
        shared = SharedBackend(
            client,
            sync_interval=settings.sync_interval_ms / 1000,
            on_error=settings.on_backend_error,
            fallback=local,
            metrics=gw.metrics,
            clock=time.monotonic,
        )
        backend = shared
        tasks.append(asyncio.create_task(shared.run()))
        gw.readiness.redis = lambda: "unavailable" if shared.down else "ok"
    gw.limiter = RateLimiter(backend, gw.metrics)
    try:
        yield
    finally:
        await stop_background(*tasks)
        if client is not None:
            await client.aclose()


def load_signer(gw: Resources) -> Signer:
    config = gw.config
    keys = []
    for index, key in enumerate(config.tokens.signing_keys):
        try:
            keys.append(signing.load_key(key.kid, config.resolve(key.path)))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{config.source}: tokens.signing_keys[{index}] (kid {key.kid}):"
                f" cannot load {key.path}: {exc}"
            ) from None
    if not keys:
        keys = [signing.dev_key(config.state_path)]
    return Signer(keys, config.tokens, clock=gw.options.clock)


@contextlib.asynccontextmanager
async def open_telemetry(gw: Resources) -> AsyncIterator[None]:
    """The access log and metrics samples, written in batches every 50 ms."""
    options = gw.options
    access_log = (
        AccessLog(options.access_log or sys.stdout.buffer) if options.log_requests else None
    )
    gw.access_log = access_log

    def flush() -> None:
        gw.metrics.drain()
        if access_log is not None:
            access_log.flush()

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(0.05)
            flush()

    task = asyncio.create_task(flush_periodically())
    try:
        yield
    finally:
        await stop_background(task)
        flush()


@contextlib.asynccontextmanager
async def open_http_session(gw: Resources) -> AsyncIterator[None]:
    """aiohttp's client: WebSocket upgrades to upstreams and the host application's JWKS."""
    gw.http = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
    )
    try:
        yield
    finally:
        await gw.http.close()
