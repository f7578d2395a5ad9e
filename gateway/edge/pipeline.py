"""The proxy's request pipeline, in one place:
safety → CORS → (gateway-owned paths) → match → authn → authz → forward.

Every stage either passes the request on or raises a `Problem`; the `Envelope`
turns problems into responses and records one access-log line per request.
Match, authn and authz are `Decider.decide`, shared with the decision endpoints.
Every request on the proxy port comes here, read by the gateway's own server,
whatever came before it on its connection; an accepted WebSocket upgrade is
the one that then leaves that server (`edge.upgrade`).
"""

from __future__ import annotations

from gateway.edge.authn import Authenticator
from gateway.edge.clients import ClientAddresses
from gateway.edge.cors import Cors
from gateway.edge.decide import Decider, Decision, Outcome, check_address
from gateway.edge.envelope import Envelope
from gateway.edge.inbound import Exchange
from gateway.edge.record import Recorder
from gateway.edge.safety import Target, Targets
from gateway.edge.upgrade import WebSocketDoor, is_upgrade
from gateway.forward.proxy import ANONYMOUS, Forwarder, Identity
from gateway.forward.upstreams import UpstreamTarget
from gateway.foundation.problems import Problem
from gateway.foundation.soon import Later, Soon
from gateway.http1.messages import Reply
from gateway.http1.wire import encode_headers
from gateway.leaks.reports import LeakReports
from gateway.selfservice.service import SelfService
from gateway.tokens.endpoint import TokenEndpoint
from gateway.tokens.identity import IdentityTokens

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
        identity_tokens: IdentityTokens,
        websockets: WebSocketDoor,
        clients: ClientAddresses,
        targets: Targets,
        self_service: SelfService | None = None,
        leak_reports: LeakReports | None = None,
    ) -> None:
        self._clients = clients
        self._targets = targets
        self._leaks = leak_reports
        self._decider = decider
        self._identity_tokens = identity_tokens
        self._authn = authenticator
        self._forwarder = forwarder
        self._upstreams = upstreams
        self._cors = cors
        self._tokens = tokens
        self._websockets = websockets
        self._self_service = self_service
        self.serve = Envelope(recorder, self._handle, self._refuse, "proxy").serve

    def _handle(
        self, exchange: Exchange, rid: str, outcome: Outcome, timing: dict[str, float]
    ) -> Soon[None]:
        target = self._targets.check(exchange.method, exchange.raw_path)
        if self._cors.is_preflight(exchange):
            outcome.route = "cors-preflight"
            exchange.reply(self._cors.preflight(exchange, rid), {})
            return None
        cors = self._cors.headers(exchange)
        if self._clients.enabled:
            exchange.client = self._clients.of(exchange.peer, exchange.headers)
            exchange.scheme = self._clients.scheme(exchange.peer, exchange.headers, exchange.scheme)
        if self._owns(target.path):
            return Later(self._gateway_owned(exchange, target.path, outcome, rid, cors))
        decided = self._decider.decide(
            exchange.method, target, exchange.fields, exchange.client, outcome
        )
        if isinstance(decided, Later):
            return Later(self._forward_after(decided, exchange, target, rid, outcome, cors, timing))
        return self._forward(decided, exchange, target, rid, outcome, cors, timing)

    async def _forward_after(
        self,
        decided: Later[Decision],
        exchange: Exchange,
        target: Target,
        rid: str,
        outcome: Outcome,
        cors: dict[str, str],
        timing: dict[str, float],
    ) -> None:
        decision = await decided
        await self._forward(decision, exchange, target, rid, outcome, cors, timing)

    def _forward(
        self,
        decision: Decision,
        exchange: Exchange,
        target: Target,
        rid: str,
        outcome: Outcome,
        cors: dict[str, str],
        timing: dict[str, float],
    ) -> Later[None]:
        """The relay to the upstream, which always waits (no coroutine of its own: one
        more level for every resumption of the request)."""
        upstream = self._upstreams[decision.route.upstream]
        outcome.upstream = upstream.name
        # The answer's own header lines, encoded here: a key's expiry line was encoded
        # with its principal, once per credential.
        extra = b"X-Request-Id: " + rid.encode("utf-8", "surrogateescape") + b"\r\n"
        if cors:
            extra += encode_headers(cors)
        extra += outcome.limit_lines()
        if decision.principal is not None:
            extra += decision.principal.expires_line
        identity = self._identity(decision, upstream.name)
        if is_upgrade(exchange.method, exchange.fields):
            return Later(
                self._websockets.relay(
                    exchange, target.raw, upstream, identity, rid, extra, outcome
                )
            )
        return Later(
            self._forwarder.relay(
                exchange, target.raw, upstream, identity, rid, extra, timing, outcome.trace
            )
        )

    def _refuse(self, exchange: Exchange, problem: Problem, rid: str, outcome: Outcome) -> None:
        exchange.problem(problem, rid, {**self._cors.headers(exchange), **outcome.limit_headers()})

    def _identity(self, decision: Decision, upstream: str) -> Identity:
        principal, mode = decision.principal, decision.route.identity
        if principal is None:
            return ANONYMOUS
        if mode == "headers":
            return Identity(principal)
        token = self._identity_tokens.token(principal, upstream)
        return Identity(principal, headers=mode == "both", token=token)

    def _owns(self, path: str) -> bool:
        """A path the gateway answers itself, before any policy route (checked without
        a coroutine: nearly every request is not one)."""
        return (
            path in (MINT_PATH, JWKS_PATH)
            or (self._leaks is not None and path == self._leaks.path)
            or (self._self_service is not None and self._self_service.owns(path))
        )

    async def _gateway_owned(
        self, exchange: Exchange, path: str, outcome: Outcome, rid: str, cors: dict[str, str]
    ) -> None:
        owned = await self._owned_answer(exchange, path, outcome, rid)
        exchange.reply(owned, {"X-Request-Id": rid, **cors})

    async def _owned_answer(
        self, request: Exchange, path: str, outcome: Outcome, rid: str
    ) -> Reply:
        """The answer to a path `_owns`."""
        if self._self_service is not None and self._self_service.owns(path):
            outcome.route = "self-service"
            return await self._self_service.handle(request, path, outcome, rid)
        if self._leaks is not None and path == self._leaks.path:
            outcome.route = "leak-reports"
            return await self._leaks.handle(request)
        outcome.route = path
        expected = "POST" if path == MINT_PATH else "GET"
        if request.method != expected:
            raise Problem(405, "method-not-allowed", f"use {expected}", headers={"Allow": expected})
        if path == JWKS_PATH:
            return self._tokens.jwks()
        principal = await self._authn.principal(request.fields, request.client)
        outcome.principal = principal
        outcome.client = request.client
        check_address(principal, request.client)
        return await self._tokens.mint(request, principal)
