"""The decision listener: the three endpoints of §12 on the gateway's own server.

Each request is turned into the original request's description (`shapes`), put
through the same safety rules and the same `Decider` as a proxied request, and
answered (`answers`) inside the same `Envelope` as the proxy's requests. A
request body is never read (one that was sent closes the connection after the
answer: its bytes are never taken for a request).
"""

from __future__ import annotations

from gateway.decisions.answers import allow, refuse
from gateway.decisions.shapes import endpoint_for, refuse_forbidden_headers
from gateway.edge.decide import Decider, Decision, Outcome
from gateway.edge.envelope import Envelope
from gateway.edge.inbound import Exchange
from gateway.edge.record import Recorder
from gateway.edge.safety import Targets
from gateway.foundation.problems import Problem
from gateway.foundation.soon import Later, Soon
from gateway.http1.wire import HeaderNames


class DecisionEndpoints:
    def __init__(
        self, decider: Decider, recorder: Recorder, names: HeaderNames, targets: Targets
    ) -> None:
        self._decider = decider
        self._names = names
        self._targets = targets
        self.serve = Envelope(recorder, self._decide, self._refuse, "decisions").serve

    def _decide(
        self, exchange: Exchange, rid: str, outcome: Outcome, _timing: dict[str, float]
    ) -> Soon[None]:
        found = endpoint_for(exchange.raw_path)
        if found is None:
            raise Problem(404, "no-decision-endpoint", "no such decision endpoint")
        outcome.endpoint, read = found
        asked = read(exchange)
        outcome.asked = (asked.method, asked.uri)
        refuse_forbidden_headers(exchange, self._names)
        target = self._targets.check(asked.method, asked.uri)
        decided = self._decider.decide(asked.method, target, exchange.fields, asked.client, outcome)
        if isinstance(decided, Later):
            return Later(self._allow_after(decided, exchange, rid, outcome))
        self._allow(decided, exchange, rid, outcome)
        return None

    async def _allow_after(
        self, decided: Later[Decision], exchange: Exchange, rid: str, outcome: Outcome
    ) -> None:
        self._allow(await decided, exchange, rid, outcome)

    def _allow(self, decision: Decision, exchange: Exchange, rid: str, outcome: Outcome) -> None:
        exchange.respond(200, b"OK", allow(decision, rid, outcome.limit_headers()), b"")

    def _refuse(self, exchange: Exchange, problem: Problem, rid: str, outcome: Outcome) -> None:
        exchange.reply(refuse(outcome.endpoint, problem, rid, outcome.limit_headers()), {})
