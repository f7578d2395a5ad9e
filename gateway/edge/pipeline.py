"""The request pipeline, in one place: safety → CORS → match → authn → authz → forward.

Every stage either passes the request on or raises a `Problem`; this module
turns problems into responses, and writes the one access-log line per request.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.edge import safety
from gateway.edge.authn import Authenticator
from gateway.edge.cors import Cors
from gateway.forward.proxy import Forwarder, request_headers
from gateway.forward.upstreams import UpstreamTarget
from gateway.keys.principal import Principal
from gateway.keys.store import KeyStore, StoreUnavailable
from gateway.observability.accesslog import AccessLog
from gateway.observability.metrics import Metrics
from gateway.policy.authz import authorize
from gateway.policy.reloader import ActivePolicies
from gateway.policy.routing import Match
from gateway.problems import Problem, database_unavailable
from gateway.selfservice.service import SelfService
from gateway.tokens.endpoint import TokenEndpoint

log = logging.getLogger("gateway.pipeline")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MINT_PATH = "/auth/actor-tokens"
JWKS_PATH = "/.well-known/jwks.json"


@dataclass(slots=True)
class _Outcome:
    """What the access log says about one request."""

    route: str = "-"
    reason: str | None = None
    principal: Principal | None = None
    user_id: str | None = None  # signed in to the API keys page (no key involved)
    upstream: str | None = None


class Pipeline:
    def __init__(
        self,
        *,
        policies: ActivePolicies,
        authenticator: Authenticator,
        store: KeyStore,
        forwarder: Forwarder,
        upstreams: dict[str, UpstreamTarget],
        cors: Cors,
        tokens: TokenEndpoint,
        metrics: Metrics,
        access_log: AccessLog | None,
        max_header_bytes: int,
        self_service: SelfService | None = None,
    ) -> None:
        self._self_service = self_service
        self._access_log = access_log
        self._policies = policies
        self._authn = authenticator
        self._store = store
        self._forwarder = forwarder
        self._upstreams = upstreams
        self._cors = cors
        self._tokens = tokens
        self._metrics = metrics
        self._max_header_bytes = max_header_bytes

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        incoming_id = request.headers.get("X-Request-Id")
        request_id = (
            incoming_id
            if incoming_id and _REQUEST_ID.fullmatch(incoming_id)
            else secrets.token_hex(16)
        )
        outcome = _Outcome()
        timing: dict[str, float] = {}
        cors = self._cors.headers(request)
        try:
            response = await self._handle(request, request_id, cors, outcome, timing)
        except Problem as problem:
            outcome.reason = problem.slug
            response = problem.response(request_id, cors)
        except Exception:
            log.exception("unexpected error (request_id %s)", request_id)
            outcome.reason = "internal-error"
            failure = Problem(500, "internal-error", "the gateway failed to handle the request")
            response = failure.response(request_id, cors)
        self._record(request, request_id, response.status, outcome, started, timing)
        return response

    async def _handle(
        self,
        request: web.BaseRequest,
        request_id: str,
        cors: dict[str, str],
        outcome: _Outcome,
        timing: dict[str, float],
    ) -> web.StreamResponse:
        target = safety.check(request, self._max_header_bytes)
        if self._cors.is_preflight(request):
            outcome.route = "cors-preflight"
            return self._cors.preflight(request, request_id)
        if self._self_service is not None and self._self_service.owns(target.path):
            outcome.route = "self-service"
            response = await self._self_service.handle(request, target.path, outcome)
            response.headers.update({"X-Request-Id": request_id, **cors})
            return response
        if target.path in (MINT_PATH, JWKS_PATH):
            return await self._own_endpoint(request, target.path, request_id, cors, outcome)
        match = self._policies.current.router.match(request.method, target.segments)
        if match is None:
            raise Problem(404, "no-route", "no route allows this method and path")
        route = match.route
        outcome.route = route.name
        principal = None
        if not route.public:
            principal = await self._authn.authenticate(request.headers)
            outcome.principal = principal
            await self._authorize(principal, match)
        upstream = self._upstreams[route.upstream]
        outcome.upstream = upstream.name
        headers = request_headers(request, principal, request_id)
        extra = {"X-Request-Id": request_id, **cors}
        return await self._forwarder.forward(request, target.raw, upstream, headers, extra, timing)

    async def _authorize(self, principal: Principal, match: Match) -> None:
        memberships: frozenset[tuple[str, str]] = frozenset()
        if match.route.member_of and match.route.scopes <= principal.scopes:
            try:
                memberships = await self._store.memberships(principal.user_id)
            except StoreUnavailable:
                raise database_unavailable() from None
        authorize(principal.scopes, match, memberships)

    async def _own_endpoint(
        self,
        request: web.BaseRequest,
        path: str,
        request_id: str,
        cors: dict[str, str],
        outcome: _Outcome,
    ) -> web.StreamResponse:
        outcome.route = path
        expected = "POST" if path == MINT_PATH else "GET"
        if request.method != expected:
            raise Problem(405, "method-not-allowed", f"use {expected}", headers={"Allow": expected})
        if path == JWKS_PATH:
            response = self._tokens.jwks()
        else:
            principal = await self._authn.authenticate(request.headers)
            outcome.principal = principal
            response = await self._tokens.mint(request, principal)
        response.headers.update({"X-Request-Id": request_id, **cors})
        return response

    def _record(
        self,
        request: web.BaseRequest,
        request_id: str,
        status: int,
        outcome: _Outcome,
        started: float,
        timing: dict[str, float],
    ) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.observe_request(outcome.route, status, elapsed, outcome.reason)
        if self._access_log is None:
            return
        principal = outcome.principal
        self._access_log.emit(
            (  # in the order of accesslog.FIELDS
                time.time(),
                request_id,
                request.method,
                # As received, without the query (which may carry anything).
                request.raw_path.partition("?")[0],
                outcome.route,
                status,
                elapsed * 1000,
                principal.user_id if principal else outcome.user_id,
                principal.key_id if principal else None,
                outcome.upstream,
                timing.get("upstream_ms"),
                outcome.reason,
            )
        )
