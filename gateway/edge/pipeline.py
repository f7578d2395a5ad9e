"""The proxy's request pipeline, in one place:
safety → CORS → (gateway-owned paths) → match → authn → authz → forward.

Every stage either passes the request on or raises a `Problem`; this module
turns problems into responses and records one access-log line per request.
Match, authn and authz are `Decider.decide`, shared with the decision endpoints.

Two entries: `serve` for a request on the listener's own server (`edge.inbound`),
`__call__` for one on a connection handed to aiohttp's server — the paths the
gateway answers itself and WebSocket upgrades (`hands_off` says which).
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from gateway.edge import safety
from gateway.edge.authn import Authenticator
from gateway.edge.cors import Cors
from gateway.edge.decide import Decider, Decision, Outcome
from gateway.edge.inbound import Exchange
from gateway.edge.record import Recorder
from gateway.forward import websocket
from gateway.forward.proxy import ANONYMOUS, Forwarder, Identity, peer_of
from gateway.forward.upstreams import UpstreamTarget
from gateway.problems import Problem
from gateway.selfservice.service import SelfService
from gateway.tokens.endpoint import TokenEndpoint
from gateway.tokens.identity import IdentityTokens

log = logging.getLogger("gateway.pipeline")
MINT_PATH = "/auth/actor-tokens"
JWKS_PATH = "/.well-known/jwks.json"


class Pipeline:
    def __init__(
        self,
        *,
        decider: Decider,
        authenticator: Authenticator,
        forwarder: Forwarder,
        upstreams: dict[str, UpstreamTarget],
        cors: Cors,
        tokens: TokenEndpoint,
        recorder: Recorder,
        max_header_bytes: int,
        identity_tokens: IdentityTokens,
        self_service: SelfService | None = None,
    ) -> None:
        self._decider = decider
        self._identity_tokens = identity_tokens
        self._authn = authenticator
        self._forwarder = forwarder
        self._upstreams = upstreams
        self._cors = cors
        self._tokens = tokens
        self._recorder = recorder
        self._max_header_bytes = max_header_bytes
        self._self_service = self_service

    def hands_off(self, exchange: Exchange) -> bool:
        """Whether aiohttp's server takes this connection: paths the gateway answers
        itself, CORS preflights and WebSocket upgrades have aiohttp handlers."""
        path = exchange.raw_path.partition("?")[0]
        return (
            path in (MINT_PATH, JWKS_PATH)
            or (self._self_service is not None and self._self_service.owns(path))
            or self._cors.is_preflight(exchange)
            or websocket.is_upgrade(exchange.method, exchange.headers)
        )

    async def serve(self, exchange: Exchange) -> None:
        """A request for a policy route on the listener's own server, answered on it."""
        started = time.perf_counter()
        rid = self._recorder.ids.for_request(exchange.headers)
        outcome = Outcome()
        timing: dict[str, float] = {}
        cors = self._cors.headers(exchange)
        try:
            target = safety.check(exchange, self._max_header_bytes)
            decision = await self._decider.decide(
                exchange.method, target, exchange.headers, exchange.peer, outcome
            )
            upstream = self._upstreams[decision.route.upstream]
            outcome.upstream = upstream.name
            extra = {"X-Request-Id": rid, **cors, **outcome.limit_headers()}
            identity = self._identity(decision, upstream.name)
            await self._forwarder.relay(
                exchange, target.raw, upstream, identity, rid, extra, timing
            )
        except Problem as problem:
            outcome.reason = problem.slug
            _refuse(exchange, problem, rid, {**cors, **outcome.limit_headers()})
        except Exception:
            log.exception("unexpected error (request_id %s)", rid)
            outcome.reason = "internal-error"
            failure = Problem(500, "internal-error", "the gateway failed to handle the request")
            _refuse(exchange, failure, rid, cors)
        self._recorder.record(
            exchange.method,
            exchange.raw_path,
            rid,
            exchange.status,
            outcome,
            started,
            timing.get("upstream_ms"),
        )

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        rid = self._recorder.ids.for_request(request.headers)
        outcome = Outcome()
        timing: dict[str, float] = {}
        cors = self._cors.headers(request)
        try:
            response = await self._handle(request, rid, cors, outcome, timing)
        except Problem as problem:
            outcome.reason = problem.slug
            response = problem.response(rid, {**cors, **outcome.limit_headers()})
        except Exception:
            log.exception("unexpected error (request_id %s)", rid)
            outcome.reason = "internal-error"
            failure = Problem(500, "internal-error", "the gateway failed to handle the request")
            response = failure.response(rid, cors)
        self._recorder.record(
            request.method,
            request.raw_path,
            rid,
            response.status,
            outcome,
            started,
            timing.get("upstream_ms"),
        )
        return response

    async def _handle(
        self,
        request: web.BaseRequest,
        rid: str,
        cors: dict[str, str],
        outcome: Outcome,
        timing: dict[str, float],
    ) -> web.StreamResponse:
        target = safety.check(request, self._max_header_bytes)
        if self._cors.is_preflight(request):
            outcome.route = "cors-preflight"
            return self._cors.preflight(request, rid)
        owned = await self._gateway_owned(request, target.path, outcome, rid)
        if owned is not None:
            owned.headers.update({"X-Request-Id": rid, **cors})
            return owned
        decision = await self._decider.decide(
            request.method, target, request.headers, peer_of(request), outcome
        )
        upstream = self._upstreams[decision.route.upstream]
        outcome.upstream = upstream.name
        extra = {"X-Request-Id": rid, **cors, **outcome.limit_headers()}
        identity = self._identity(decision, upstream.name)
        return await self._forwarder.forward(
            request, target.raw, upstream, identity, rid, extra, timing
        )

    def _identity(self, decision: Decision, upstream: str) -> Identity:
        principal, mode = decision.principal, decision.route.identity
        if principal is None:
            return ANONYMOUS
        if mode == "headers":
            return Identity(principal)
        token = self._identity_tokens.token(principal, upstream)
        return Identity(principal, headers=mode == "both", token=token)

    async def _gateway_owned(
        self, request: web.BaseRequest, path: str, outcome: Outcome, rid: str
    ) -> web.StreamResponse | None:
        """The paths the gateway answers itself, before any policy route."""
        if self._self_service is not None and self._self_service.owns(path):
            outcome.route = "self-service"
            return await self._self_service.handle(request, path, outcome, rid)
        if path not in (MINT_PATH, JWKS_PATH):
            return None
        outcome.route = path
        expected = "POST" if path == MINT_PATH else "GET"
        if request.method != expected:
            raise Problem(405, "method-not-allowed", f"use {expected}", headers={"Allow": expected})
        if path == JWKS_PATH:
            return self._tokens.jwks()
        principal = await self._authn.authenticate(request.headers)
        outcome.principal = principal
        return await self._tokens.mint(request, principal)


def _refuse(exchange: Exchange, problem: Problem, rid: str, headers: dict[str, str]) -> None:
    """Answer with the problem, unless the answer has begun: then only cutting the
    connection tells the client its response is not whole."""
    if exchange.started:
        exchange.abort()
    else:
        exchange.problem(problem, rid, headers)
