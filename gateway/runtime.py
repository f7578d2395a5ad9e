"""The composition root: `Gateway` owns everything the gateway runs on and starts its
listeners as equals — the proxy, the decision endpoints, the admin API — none of them
inside another. Starting opens the resources in order (`resources`) and then the
listeners; stopping closes the listeners (requests in flight finish), then the
resources in reverse order. `gateway serve`, `gateway demo` and the tests all run
the gateway through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import AsyncIterator
from types import TracebackType

import watchfiles
from aiohttp import web

from gateway import resources
from gateway.app import create_admin_app
from gateway.decisions.service import DecisionEndpoints
from gateway.edge.authn import Authenticator
from gateway.edge.clients import ClientAddresses
from gateway.edge.cors import Cors
from gateway.edge.decide import Decider
from gateway.edge.inbound import Lane, Limits
from gateway.edge.listener import guard, server_limits
from gateway.edge.pipeline import Pipeline
from gateway.edge.record import Recorder
from gateway.edge.safety import Targets
from gateway.edge.upgrade import WebSocketDoor
from gateway.forward.proxy import Forwarder, HeaderRules
from gateway.forward.upstreams import UpstreamTarget
from gateway.foundation.config import Config
from gateway.http1.wire import HeaderNames
from gateway.leaks.reports import LeakReports
from gateway.leaks.signatures import GithubKeys
from gateway.resources import Address, Options, Resources
from gateway.selfservice import service as self_service
from gateway.tls.contexts import ServerTLS
from gateway.tokens.endpoint import TokenEndpoint
from gateway.tokens.identity import IdentityTokens

log = logging.getLogger("gateway")
# aiohttp's default backlog (128) drops connections in a burst before we ever
# accept them, and the header deadline only starts at the accept.
_BACKLOG = 1024


class Gateway(Resources):
    """`async with Gateway(config, options) as gateway:` — running inside the block."""

    identity_tokens: IdentityTokens
    upstreams: dict[str, UpstreamTarget]
    admin_app: web.Application

    def __init__(self, config: Config, options: Options | None = None) -> None:
        super().__init__(config, options)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Gateway:
        try:
            for opener in (
                resources.open_tracing,
                resources.open_database,
                resources.open_store,
                resources.open_invalidation,
                resources.open_organization_policies,
                resources.open_credits,
                resources.open_usage,
                resources.open_webhooks,
                resources.open_policies,
                resources.open_rate_limits,
                resources.open_telemetry,
                resources.open_http_session,
            ):
                await self._stack.enter_async_context(opener(self))
            await self._stack.enter_async_context(self._listeners())
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def _doors(self, recorder: Recorder) -> tuple[Pipeline, DecisionEndpoints, WebSocketDoor]:
        """The request path: the proxy pipeline, the decision endpoints, WebSockets."""
        config = self.config
        signer = resources.load_signer(self)
        self.identity_tokens = IdentityTokens(signer, config.tokens.issuer)
        authenticator = Authenticator(
            self.store, signer, config.keys.prefix, config.key_policy.max_lifetime_days
        )
        decider = Decider(
            self.policies,
            authenticator,
            self.store,
            self.limiter,
            self.ledger,
            self.organizations,
            self.pools,
        )
        self.upstreams = {
            name: UpstreamTarget.of(name, u, config.resolve) for name, u in config.upstreams.items()
        }
        # The memos of this gateway (header names, request paths): owned here, handed
        # to what reads them.
        names = HeaderNames()
        rules = HeaderRules(names)
        targets = Targets()
        websockets = WebSocketDoor(recorder, config.limits.websocket_idle_seconds, rules)
        pipeline = Pipeline(
            decider=decider,
            authenticator=authenticator,
            forwarder=Forwarder(config.limits, rules),
            upstreams=self.upstreams,
            cors=Cors(config.cors),
            tokens=TokenEndpoint(signer, config.tokens),
            recorder=recorder,
            identity_tokens=self.identity_tokens,
            websockets=websockets,
            clients=ClientAddresses(config.trusted_proxies),
            targets=targets,
            self_service=self_service.from_config(config, self.pool, self.http, self.caught_up),
            leak_reports=self._leak_reports(),
        )
        return pipeline, DecisionEndpoints(decider, recorder, names, targets), websockets

    def _leak_reports(self) -> LeakReports | None:
        settings = self.config.leak_reports
        if not settings.enabled:
            return None
        file = settings.github_public_keys_file
        keys = GithubKeys(
            self.http,
            settings.github_public_keys_url,
            self.config.resolve(file) if file is not None else None,
        )
        return LeakReports(settings.path, keys, self.pool, self.config.keys.prefix)

    @contextlib.asynccontextmanager
    async def _listeners(self) -> AsyncIterator[None]:
        config, reuse_port = self.config, self.options.reuse_port
        recorder = Recorder(self.metrics, self.access_log, self.usage, self.tracing)
        pipeline, decisions, websockets = self._doors(recorder)
        limits = Limits(
            header_timeout=config.limits.header_timeout_seconds,
            body_timeout=config.limits.body_timeout_seconds,
            max_header_bytes=config.limits.max_header_bytes,
            max_body_bytes=config.limits.max_body_bytes,
        )
        self.server_tls = self._server_tls()
        tls = {tls.where: tls.context for tls in self.server_tls}
        lanes = [Lane(pipeline.serve, limits, recorder.unreadable("proxy"))]
        listen = config.listen
        servers = [
            await _listen(lanes[0], listen.host, listen.port, reuse_port, tls.get("listen.tls"))
        ]
        self.proxy_address = _address(servers[0])
        admin: web.AppRunner | None = None
        watching = asyncio.create_task(self._watch_tls())
        try:
            if config.decisions.enabled:
                lanes.append(Lane(decisions.serve, limits, recorder.unreadable("decisions")))
                where = config.decisions.listen
                context = tls.get("decisions.listen.tls")
                servers.append(await _listen(lanes[1], where.host, where.port, reuse_port, context))
                self.decisions_address = _address(servers[1])
                log.info("decision endpoints listening on %s:%s", *self.decisions_address)
            if self.options.admin:
                admin = await self._start_admin(tls.get("admin.tls"))
            if self.options.freeze_gc:
                # Everything alive now lives as long as the process; leaving it to the
                # collector made each full collection a 15-30 ms stall (the p99 under load).
                gc.collect()
                gc.freeze()
            log.info("proxy listening on %s:%s", *self.proxy_address)
            yield
        finally:
            watching.cancel()
            for listening in servers:
                listening.close()
            grace = config.shutdown.timeout_seconds
            await asyncio.gather(
                *(lane.shutdown(grace) for lane in lanes), websockets.shutdown(grace)
            )
            if admin is not None:
                await admin.cleanup()
            for upstream in self.upstreams.values():
                upstream.pool.close()

    def _server_tls(self) -> list[ServerTLS]:
        """The listeners' TLS contexts; a file that does not load stops the start."""
        config = self.config
        wanted = (
            ("listen.tls", config.listen.tls),
            ("admin.tls", config.admin.tls),
            ("decisions.listen.tls", config.decisions.listen.tls),
        )
        return [ServerTLS(where, tls, config.resolve) for where, tls in wanted if tls is not None]

    async def _watch_tls(self) -> None:
        files = [str(path) for tls in self.server_tls for path in tls.files]
        if not files:
            return
        async for _ in watchfiles.awatch(*files, debounce=200, recursive=False):
            self.reload_tls()

    async def _start_admin(self, context: ssl.SSLContext | None) -> web.AppRunner:
        where = self.config.admin
        self.admin_app = create_admin_app(self)
        runner = web.AppRunner(
            self.admin_app,
            handle_signals=False,
            shutdown_timeout=5,
            **server_limits(self.config.limits),
        )
        await runner.setup()
        guard(runner)
        site = web.TCPSite(
            runner,
            where.host,
            where.port,
            reuse_port=self.options.reuse_port or None,
            backlog=_BACKLOG,
            ssl_context=context,
        )
        await site.start()
        host, port = runner.addresses[0][:2]
        self.admin_address = str(host), int(port)
        log.info("admin API listening on %s:%s", *self.admin_address)
        return runner


async def _listen(
    lane: Lane, host: str, port: int, reuse_port: bool, context: ssl.SSLContext | None
) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(
        lane.protocol, host, port, reuse_port=reuse_port or None, backlog=_BACKLOG, ssl=context
    )


def _address(server: asyncio.Server) -> Address:
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)
