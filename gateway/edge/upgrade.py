"""Accepted WebSocket upgrades: the one kind of request that leaves the gateway's own
server. The upgrade is decided there like any request (safety, route, credential,
scopes, limits); then the connection, from the handshake's head on, goes to an
aiohttp protocol that answers that one handshake with what was decided, relays
frames both ways, and closes the connection when the session ends. Nothing it
parses is forwarded: the upstream handshake is built from the head the gateway's
own reader read, and nothing after it is ever served as HTTP.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.config import Limits
from gateway.edge.decide import Outcome
from gateway.edge.inbound import Exchange
from gateway.edge.listener import server
from gateway.edge.record import Recorder
from gateway.forward import websocket
from gateway.forward.proxy import Identity, request_headers
from gateway.forward.upstreams import UpstreamTarget
from gateway.problems import Problem


@dataclass(frozen=True, slots=True)
class _Ticket:
    """What was decided for one upgrade, for the protocol that takes its connection."""

    exchange: Exchange
    raw_target: str
    upstream: UpstreamTarget
    identity: Identity
    request_id: str
    extra: dict[str, str]
    outcome: Outcome
    started: float


class WebSocketDoor:
    def __init__(self, session: aiohttp.ClientSession, recorder: Recorder, limits: Limits) -> None:
        self._session = session
        self._recorder = recorder
        self.server = server(self.relay, limits)  # aiohttp's: for handshakes only
        # Weak: a client gone before its handshake was read leaves no ticket behind.
        self._tickets: weakref.WeakKeyDictionary[web.RequestHandler, _Ticket] = (
            weakref.WeakKeyDictionary()
        )

    def switch(
        self,
        exchange: Exchange,
        raw_target: str,
        upstream: UpstreamTarget,
        identity: Identity,
        request_id: str,
        extra: dict[str, str],
        outcome: Outcome,
    ) -> None:
        """Hand the connection over; recorded once the WebSocket session ends."""
        if exchange.body_exists:
            exchange.close_after = True  # what the bytes after it are is anyone's guess
            raise Problem(400, "upgrade-with-body", "an upgrade request cannot carry a body")
        protocol = self.server()
        started = time.perf_counter()
        self._tickets[protocol] = _Ticket(
            exchange, raw_target, upstream, identity, request_id, extra, outcome, started
        )
        exchange.switch(protocol)

    async def relay(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's handler: the handshake a ticket was issued for, then nothing more."""
        ticket = self._tickets.pop(request.protocol, None)
        if ticket is None:
            response: web.StreamResponse = Problem(
                400, "bad-request", "nothing more is served on this connection"
            ).response("-")
            response.force_close()
            return response
        exchange = ticket.exchange
        trace = ticket.outcome.trace
        propagated = trace.upstream_headers() if trace is not None else ()
        headers = request_headers(exchange, ticket.identity, ticket.request_id, propagated)
        try:
            response = await websocket.relay(
                self._session,
                request,
                ticket.raw_target,
                ticket.upstream,
                headers,
                ticket.extra,
            )
        except Problem as problem:
            ticket.outcome.reason = problem.slug
            response = problem.response(ticket.request_id, ticket.extra)
        response.force_close()
        self._recorder.record(
            exchange.method,
            exchange.raw_path,
            ticket.request_id,
            response.status,
            ticket.outcome,
            ticket.started,
        )
        return response
