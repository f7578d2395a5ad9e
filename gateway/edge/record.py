"""Request ids, and the one access-log line and metrics sample per request (either door)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

from gateway.edge.decide import Outcome
from gateway.http1.fields import Fields
from gateway.observability.accesslog import AccessLog, to_microsecond
from gateway.observability.metrics import Metrics
from gateway.tracing.spans import Tracing
from gateway.usage.counter import (
    ALLOWED,
    CREDITS_EXHAUSTED,
    DENIED,
    RATE_LIMITED,
    REJECTED,
    UsageCounter,
)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_LOW_DIGITS = tuple(f"{n:03x}" for n in range(4096))


class RequestIds:
    """New request ids: a random 64-bit prefix per process and a counter — unique across
    processes and hosts without a random-number system call per request."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = 0
        self._high = ""  # the prefix and the counter's hex digits but the last three

    def for_request(self, fields: Fields) -> str:
        """The client's (or front proxy's) `X-Request-Id` when well-formed, else a new one."""
        incoming = fields.get(b"x-request-id")
        if incoming and _REQUEST_ID.fullmatch(incoming):
            return incoming
        return self.new()

    def new(self) -> str:
        """The prefix and the counter in 16 hex digits. Formatting the counter per request
        cost 2.5 % of a proxied request's instructions: its last three digits come from
        a table, and the rest change once in 4096."""
        count = self._count = self._count + 1
        low = count & 0xFFF
        if low == 0 or not self._high:
            self._high = f"{self._prefix}{count >> 12:013x}"
        return self._high + _LOW_DIGITS[low]


class Recorder:
    def __init__(
        self,
        metrics: Metrics,
        access_log: AccessLog | None,
        usage: UsageCounter | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics
        self._access_log = access_log
        self._usage = usage
        self.ids = RequestIds()
        self.tracing = tracing

    def unreadable(self, endpoint: str) -> Unreadable:
        """For a listener: bytes refused before they were a request (no method, no path)
        are still one access-log line and one metrics sample, under a new request id."""
        return _Unreadable(self, endpoint)

    def record(
        self,
        method: str,
        raw_target: str,
        request_id: str,
        status: int,
        outcome: Outcome,
        started: float,
        upstream_ms: float | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.observe_request(
            outcome.route, status, elapsed, outcome.reason, outcome.endpoint
        )
        if self._usage is not None:
            count_usage(self._usage, outcome, status)
        if self._access_log is None:
            return
        principal = outcome.principal
        self._access_log.emit(
            (  # in the order of accesslog.FIELDS
                time.time(),
                request_id,
                method,
                # As received, without the query (which may carry anything).
                raw_target.partition("?")[0],
                outcome.route,
                status,
                to_microsecond(elapsed * 1000),
                principal.user_id if principal else outcome.user_id,
                principal.key_id if principal else None,
                outcome.upstream,
                None if upstream_ms is None else to_microsecond(upstream_ms),
                outcome.reason,
                outcome.endpoint,
                outcome.client,
                outcome.trace.trace_id if outcome.trace is not None else None,
            )
        )


def count_usage(usage: UsageCounter, outcome: Outcome, status: int) -> None:
    """The key's usage counts (§17): what the gateway decided about a request with it."""
    principal = outcome.principal
    if principal is None:
        if outcome.refused_key is not None:
            usage.count(outcome.refused_key, REJECTED)
        return
    reason = outcome.reason
    if reason is None:
        kind = ALLOWED  # whatever the upstream answered
    elif reason == "rate-limited":
        kind = RATE_LIMITED
    elif reason == "credits-exhausted":
        kind = CREDITS_EXHAUSTED
    elif status == 403:
        kind = DENIED
    else:
        kind = ALLOWED  # allowed, then the upstream failed (502, 504)
    usage.count(principal.key_id, kind, outcome.credits_spent)


# (the client's address, the status, the problem's slug) → the request id it was given
Unreadable = Callable[[str, int, str], str]


class _Unreadable:
    __slots__ = ("_endpoint", "_recorder")

    def __init__(self, recorder: Recorder, endpoint: str) -> None:
        self._recorder, self._endpoint = recorder, endpoint

    def __call__(self, client: str, status: int, slug: str) -> str:
        request_id = self._recorder.ids.new()
        outcome = Outcome(self._endpoint, client)
        outcome.reason = slug
        self._recorder.record("-", "-", request_id, status, outcome, time.perf_counter())
        return request_id
