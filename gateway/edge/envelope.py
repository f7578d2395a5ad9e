"""What every request on the gateway's own server goes through, whichever door:
a request id → the door's work → its answer, or the refusal of the `Problem` it
raised → one access-log line and metrics sample (the unknown path's 404 included).

The proxy pipeline and the decision endpoints differ only in their work and in
how a refusal is worded (Oathkeeper's proxy and decision API share the same
`HandleRequest` / `HandleError` this way).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.edge.authn import RefusedKey
from gateway.edge.decide import Outcome
from gateway.edge.inbound import Exchange
from gateway.edge.record import Recorder
from gateway.foundation.problems import Problem
from gateway.foundation.soon import Later, Soon

log = logging.getLogger("gateway.envelope")

# (the request, its id, what the log says of it, timings) → the answer is written, or
# a `Later` that writes it
Work = Callable[[Exchange, str, Outcome, dict[str, float]], "Soon[None]"]
# (the request, the problem, its id, what the log says of it) → the refusal is written
Refuse = Callable[[Exchange, Problem, str, Outcome], None]


class Envelope:
    def __init__(self, recorder: Recorder, work: Work, refuse: Refuse, endpoint: str) -> None:
        self._recorder = recorder
        self._work = work
        self._refuse = refuse
        self._endpoint = endpoint

    def serve(self, exchange: Exchange) -> Soon[None]:
        """None once the request is answered and recorded; a `Later` that finishes both
        when the door's work must wait."""
        started = time.perf_counter()
        rid = self._recorder.ids.for_request(exchange.fields)
        outcome = Outcome(endpoint=self._endpoint, client=exchange.peer)
        tracing = self._recorder.tracing
        if tracing is not None:
            path = exchange.raw_path.partition("?")[0]
            outcome.trace = tracing.begin(exchange.headers, exchange.method, path)
        timing: dict[str, float] = {}
        try:
            working = self._work(exchange, rid, outcome, timing)
        except Exception as failure:
            self._failed(exchange, failure, rid, outcome)
        else:
            if working is not None:
                return Later(self._finish(working, exchange, rid, outcome, started, timing))
        self._record(exchange, rid, outcome, started, timing)
        return None

    async def _finish(
        self,
        working: Later[None],
        exchange: Exchange,
        rid: str,
        outcome: Outcome,
        started: float,
        timing: dict[str, float],
    ) -> None:
        try:
            await working
        except Exception as failure:
            self._failed(exchange, failure, rid, outcome)
        self._record(exchange, rid, outcome, started, timing)

    def _failed(self, exchange: Exchange, failure: Exception, rid: str, outcome: Outcome) -> None:
        if isinstance(failure, Problem):
            outcome.reason = failure.slug
            if isinstance(failure, RefusedKey):
                outcome.refused_key = failure.key_id
            self._answer(exchange, failure, rid, outcome)
            return
        log.error("unexpected error (request_id %s)", rid, exc_info=failure)
        outcome.reason = "internal-error"
        internal = Problem(500, "internal-error", "the gateway failed to handle the request")
        self._answer(exchange, internal, rid, outcome)

    def _record(
        self,
        exchange: Exchange,
        rid: str,
        outcome: Outcome,
        started: float,
        timing: dict[str, float],
    ) -> None:
        if outcome.trace is not None and outcome.trace.recording:
            # An upgrade's span ends at the hand-over; the relay's outcome is logged.
            status = 101 if exchange.switched else exchange.status
            outcome.trace.end(status, span_attributes(outcome, exchange.method, rid))
        if exchange.switched:
            return  # recorded by whoever took the connection, when it is done
        method, target = outcome.asked or (exchange.method, exchange.raw_path)
        self._recorder.record(
            method, target, rid, exchange.status, outcome, started, timing.get("upstream_ms")
        )

    def _answer(self, exchange: Exchange, problem: Problem, rid: str, outcome: Outcome) -> None:
        """The refusal, unless the answer has begun: then only cutting the connection
        tells the client its response is not whole."""
        if exchange.started:
            exchange.abort()
        else:
            self._refuse(exchange, problem, rid, outcome)


def span_attributes(outcome: Outcome, method: str, rid: str) -> dict[str, str | None]:
    """What the request's span says besides its method, path and status (§19)."""
    principal = outcome.principal
    asked = outcome.asked
    return {
        "http.request.method": method,
        "http.route": outcome.template,
        "gateway.route": outcome.route,
        "gateway.endpoint": outcome.endpoint,
        "gateway.key_id": principal.key_id if principal else None,
        "gateway.user_id": principal.user_id if principal else outcome.user_id,
        "gateway.reason": outcome.reason,
        "gateway.request_id": rid,
        "gateway.upstream": outcome.upstream,
        "client.address": outcome.client or None,
        # A decision endpoint's span is about the request the front proxy asked about.
        "gateway.asked.method": asked[0] if asked else None,
        "gateway.asked.path": asked[1].partition("?")[0] if asked else None,
    }
