"""`create_app(config)`: the admin application, whose cleanup contexts open
everything the gateway runs on — database, caches, invalidation listener,
policies, signer, upstream session — and the proxy listener itself.
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
import redis.asyncio as aioredis
from aiohttp import web

from gateway import database
from gateway.admin.api import add_routes as add_admin_routes
from gateway.appkeys import (
    CONFIG,
    DATABASE_URL,
    DECISIONS_ADDRESS,
    IDENTITY_TOKENS,
    LISTENER,
    METRICS,
    POLICIES,
    POOL,
    PROXY_ADDRESS,
    RATE_LIMITER,
    SCOPES,
    STORE,
)
from gateway.config import Config, ConfigError
from gateway.decisions.service import DecisionEndpoints
from gateway.edge.authn import Authenticator
from gateway.edge.cors import Cors
from gateway.edge.decide import Decider
from gateway.edge.inbound import Lane, Limits
from gateway.edge.pipeline import Pipeline
from gateway.edge.record import Recorder
from gateway.edge.upgrade import WebSocketDoor
from gateway.forward.proxy import Forwarder
from gateway.forward.upstreams import UpstreamTarget
from gateway.keys.invalidation import Listener
from gateway.keys.store import Clock, KeyStore
from gateway.observability.accesslog import AccessLog
from gateway.observability.metrics import Metrics
from gateway.policy.reloader import ActivePolicies
from gateway.policy.scopes import Catalogue
from gateway.ratelimit.limiter import Backend, RateLimiter, sweep_periodically
from gateway.ratelimit.local import LocalBackend
from gateway.ratelimit.shared import SharedBackend
from gateway.selfservice import service as self_service
from gateway.tokens import signing
from gateway.tokens.actor import Signer
from gateway.tokens.endpoint import TokenEndpoint
from gateway.tokens.identity import IdentityTokens

log = logging.getLogger("gateway")


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


OPTIONS = web.AppKey("options", Options)


def create_app(config: Config, options: Options | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[CONFIG] = config
    app[OPTIONS] = options or Options()
    app[SCOPES] = Catalogue({name: d.implies for name, d in config.scopes.items()})
    app[METRICS] = Metrics()
    add_admin_routes(app)
    app.cleanup_ctx.extend([_database, _store, _invalidation, _policies, _rate_limits, _proxy])
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    cleanup = app[OPTIONS].embedded_cleanup
    url = await loop.run_in_executor(None, database.database_url, config, cleanup)
    await database.wait_until_ready(url, config)
    if app[OPTIONS].migrate:
        conn = await database.connect(url, config)
        try:
            await database.migrate(conn)
        finally:
            await conn.close()
    app[DATABASE_URL] = url
    app[POOL] = await database.create_pool(url, config)
    yield
    await app[POOL].close()


async def _store(app: web.Application) -> AsyncIterator[None]:
    options = app[OPTIONS]
    store = KeyStore(
        app[POOL], app[SCOPES], app[CONFIG].cache, clock=options.clock, observer=app[METRICS]
    )
    app[STORE] = store

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(options.last_used_interval)
            await store.flush_last_used()

    tasks = [asyncio.create_task(flush_periodically())]
    if options.freeze_gc:
        tasks.append(asyncio.create_task(_settle_caches(store)))
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await store.flush_last_used()


async def _settle_caches(store: KeyStore, interval: float = 5.0, growth: int = 5000) -> None:
    """Freeze grown caches out of the collector's full passes (as at start-up, below).

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


async def _invalidation(app: web.Application) -> AsyncIterator[None]:
    listener = Listener(
        app[DATABASE_URL],
        app[STORE],
        app[METRICS],
        check_interval=app[OPTIONS].listener_check_interval,
    )
    app[LISTENER] = listener
    task = asyncio.create_task(listener.run())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(listener.connected.wait(), 10)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _policies(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    policies = ActivePolicies(
        config.resolve(config.policies.dir),
        app[SCOPES],
        frozenset(config.upstreams),
        app[METRICS],
    )
    app[POLICIES] = policies
    stop = asyncio.Event()
    watcher = asyncio.create_task(policies.watch(stop)) if config.policies.reload else None
    loop = asyncio.get_running_loop()
    if app[OPTIONS].handle_sighup:
        pending: set[asyncio.Task[bool]] = set()

        def on_sighup() -> None:
            task = asyncio.create_task(policies.reload_off_loop())
            pending.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    yield
    if app[OPTIONS].handle_sighup:
        loop.remove_signal_handler(signal.SIGHUP)
    stop.set()
    if watcher is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _rate_limits(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].rate_limiting
    local = LocalBackend(time.monotonic)
    backend: Backend = local
    client: aioredis.Redis | None = None
    if settings.backend == "redis":
        assert settings.redis_url is not None
        # Short timeouts: a dead Redis must fail fast into on_backend_error.
        client = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=0.25, socket_timeout=0.25
        )
        shared = SharedBackend(
            client,
            sync_interval=settings.sync_interval_ms / 1000,
            on_error=settings.on_backend_error,
            fallback=local,
            metrics=app[METRICS],
            clock=time.monotonic,
        )
        backend = shared
        tasks = [asyncio.create_task(shared.run()), asyncio.create_task(sweep_periodically(local))]
    else:
        tasks = [asyncio.create_task(sweep_periodically(local))]
    app[RATE_LIMITER] = RateLimiter(backend, app[METRICS])
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if client is not None:
        await client.aclose()


def _signer(app: web.Application) -> Signer:
    config = app[CONFIG]
    keys = []
    for index, key in enumerate(config.tokens.signing_keys):
        try:
            keys.append(signing.load_key(key.kid, config.resolve(key.file)))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{config.source}: tokens.signing_keys[{index}] (kid {key.kid}):"
                f" cannot load {key.file}: {exc}"
            ) from None
    if not keys:
        keys = [signing.dev_key(config.state_path)]
    return Signer(keys, config.tokens, clock=app[OPTIONS].clock)


async def _proxy(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    signer = _signer(app)
    options = app[OPTIONS]
    access_log = (
        AccessLog(options.access_log or sys.stdout.buffer) if options.log_requests else None
    )
    metrics = app[METRICS]

    def flush_telemetry() -> None:
        metrics.drain()
        if access_log is not None:
            access_log.flush()

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(0.05)
            flush_telemetry()

    telemetry = asyncio.create_task(flush_periodically())
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
    )
    app[IDENTITY_TOKENS] = IdentityTokens(signer, config.tokens.issuer)
    authenticator = Authenticator(app[STORE], signer, config.keys.prefix)
    decider = Decider(app[POLICIES], authenticator, app[STORE], app[RATE_LIMITER])
    recorder = Recorder(metrics, access_log)
    upstreams = {name: UpstreamTarget.of(name, u) for name, u in config.upstreams.items()}
    websockets = WebSocketDoor(session, recorder, config.limits)
    pipeline = Pipeline(
        decider=decider,
        authenticator=authenticator,
        forwarder=Forwarder(config.limits.max_body_bytes),
        upstreams=upstreams,
        cors=Cors(config.cors),
        tokens=TokenEndpoint(signer, config.tokens),
        recorder=recorder,
        identity_tokens=app[IDENTITY_TOKENS],
        websockets=websockets,
        self_service=self_service.from_config(config, app[POOL], session),
    )
    reuse_port = app[OPTIONS].reuse_port
    limits = Limits(
        header_timeout=config.limits.header_timeout_seconds,
        body_timeout=config.limits.body_timeout_seconds,
        max_header_bytes=config.limits.max_header_bytes,
        max_body_bytes=config.limits.max_body_bytes,
    )
    lanes = [Lane(pipeline.serve, limits, recorder.ids.new)]
    proxy = await _listen(lanes[0], config.listen.host, config.listen.port, reuse_port)
    app[PROXY_ADDRESS] = tuple(proxy.sockets[0].getsockname()[:2])
    servers = [proxy]
    if config.decisions.enabled:
        lanes.append(Lane(DecisionEndpoints(decider, recorder).serve, limits, recorder.ids.new))
        address = config.decisions.listen
        servers.append(await _listen(lanes[1], address.host, address.port, reuse_port))
        app[DECISIONS_ADDRESS] = tuple(servers[1].sockets[0].getsockname()[:2])
        log.info("decision endpoints listening on %s:%s", *app[DECISIONS_ADDRESS])
    if options.freeze_gc:
        # Everything alive now lives as long as the process; leaving it to the
        # collector made each full collection a 15-30 ms stall (the p99 under load).
        gc.collect()
        gc.freeze()
    log.info("proxy listening on %s:%s", *app[PROXY_ADDRESS])
    yield
    for listening in servers:
        listening.close()
    websockets.server.pre_shutdown()  # as aiohttp's runner does: idle connections close now
    await asyncio.gather(*(lane.shutdown(_SHUTDOWN_SECONDS) for lane in lanes))
    await websockets.server.shutdown(_SHUTDOWN_SECONDS)
    for upstream in upstreams.values():
        upstream.pool.close()
    await session.close()
    telemetry.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await telemetry
    flush_telemetry()


# aiohttp's default backlog (128) drops connections in a burst before we ever
# accept them, and the header deadline only starts at the accept.
_BACKLOG = 1024
_SHUTDOWN_SECONDS = 30.0  # for requests in flight when the process is told to stop


async def _listen(lane: Lane, host: str, port: int, reuse_port: bool) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(
        lane.protocol, host, port, reuse_port=reuse_port or None, backlog=_BACKLOG
    )
