"""The decision listener: one handler for the three endpoints of §12.

Each request is turned into the original request's description (`shapes`), put
through the same safety rules and the same `Decider` as a proxied request, and
answered (`answers`). A request body is never read.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from gateway.decisions.answers import allow, refuse
from gateway.decisions.shapes import endpoint_for
from gateway.edge import safety
from gateway.edge.decide import Decider, Outcome
from gateway.edge.record import Recorder
from gateway.problems import Problem

log = logging.getLogger("gateway.decisions")


class DecisionEndpoints:
    def __init__(self, decider: Decider, recorder: Recorder) -> None:
        self._decider = decider
        self._recorder = recorder

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        rid = self._recorder.ids.for_request(request.headers)
        found = endpoint_for(request.raw_path)
        if found is None:
            problem = Problem(404, "no-decision-endpoint", "no such decision endpoint")
            return problem.response(rid)
        endpoint, read = found
        outcome = Outcome(endpoint=endpoint)
        method, uri = request.method, request.raw_path
        try:
            asked = read(request)
            method, uri = asked.method, asked.uri
            target = safety.check_target(asked.method, asked.uri)
            decision = await self._decider.decide(
                asked.method, target, request.headers, asked.client, outcome
            )
            response = allow(decision, rid, outcome.limit_headers())
        except Problem as problem:
            outcome.reason = problem.slug
            response = refuse(endpoint, problem, rid, outcome.limit_headers())
        except Exception:
            log.exception("unexpected error deciding (request_id %s)", rid)
            outcome.reason = "internal-error"
            failure = Problem(500, "internal-error", "the gateway failed to decide")
            response = refuse(endpoint, failure, rid, {})
        self._recorder.record(method, uri, rid, response.status, outcome, started)
        return response
