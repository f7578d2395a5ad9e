"""The rate-limit stage of the pipeline (§13): which limits a request counts against, the
429, and the draft-ietf-httpapi-ratelimit-headers-11 fields on every response of a
limited route. `by: ip` limits run before authentication, the others after authorization."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from gateway.foundation.problems import Problem
from gateway.foundation.soon import Later, Soon
from gateway.keys.principal import Principal
from gateway.observability.metrics import Metrics
from gateway.policy.ratelimits import policy_header
from gateway.policy.routing import Route
from gateway.ratelimit.gcra import Verdict, state_header, whole_seconds
from gateway.ratelimit.local import Ask, LocalBackend
from gateway.ratelimit.shared import BackendUnavailable


class Backend(Protocol):
    async def take(self, asks: Sequence[Ask]) -> list[Verdict]: ...


class LimitState:
    """What a request's limits said so far: the headers every response of it carries."""

    __slots__ = ("closest", "headers")

    def __init__(self, policy: str) -> None:
        self.headers = {"RateLimit-Policy": policy}
        self.closest: Verdict | None = None


class RateLimiter:
    """Each check returns None once decided, or a `Later` to await for the verdict:
    the local backend decides at once, so a limited route costs it no coroutine."""

    def __init__(self, backend: Backend, metrics: Metrics) -> None:
        self.backend = backend
        self._metrics = metrics
        self._local = backend if isinstance(backend, LocalBackend) else None

    def before_authentication(self, route: Route, client: str, state: LimitState) -> Soon[None]:
        limits = route.address_limits
        if not limits:
            return None
        if self._local is not None and len(limits) == 1:  # the common case, in short
            self._settle_one(self._local.take_one(limits[0], client), state)
            return None
        return self._admit([(limit, client) for limit in limits], state)

    def after_authorization(
        self, route: Route, principal: Principal | None, state: LimitState
    ) -> Soon[None]:
        if principal is None or not route.identity_limits:
            return None
        limits = route.identity_limits
        own = principal.limits
        if own is not None and any(limit.name in own for limit in limits):
            # This key's own numbers: a limit of their own (own identity, own counter,
            # shared through Redis like any limit), and said so in RateLimit-Policy.
            limits = tuple(own.get(limit.name, limit) for limit in limits)
            named = {limit.name: limit for limit in (*route.address_limits, *limits)}
            state.headers["RateLimit-Policy"] = policy_header(tuple(named.values()))
        if self._local is not None and len(limits) == 1:  # the common case, in short
            limit = limits[0]
            subject = principal.key_id if limit.by == "key" else principal.user_id
            self._settle_one(self._local.take_one(limit, subject), state)
            return None
        asks = [
            (limit, principal.key_id if limit.by == "key" else principal.user_id)
            for limit in limits
        ]
        return self._admit(asks, state)

    def _admit(self, asks: list[Ask], state: LimitState) -> Soon[None]:
        if self._local is None:
            return Later(self._admit_shared(asks, state))
        self._settle(self._local.take_now(asks), state)
        return None

    async def _admit_shared(self, asks: list[Ask], state: LimitState) -> None:
        try:
            verdicts = await self.backend.take(asks)
        except BackendUnavailable:
            raise Problem(
                503,
                "rate-limit-unavailable",
                "rate limits cannot be checked right now; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        self._settle(verdicts, state)

    def _settle_one(self, verdict: Verdict, state: LimitState) -> None:
        if not verdict.allowed:
            self._settle([verdict], state)
        elif state.closest is None or verdict.remaining < state.closest.remaining:
            state.closest = verdict
            state.headers["RateLimit"] = state_header(verdict)

    def _settle(self, verdicts: list[Verdict], state: LimitState) -> None:
        """The headers of the limit closest to refusing; the 429 when one refused."""
        refused = [verdict for verdict in verdicts if not verdict.allowed]
        if refused:
            closest = refused[0]
        else:
            closest = verdicts[0] if len(verdicts) == 1 else min(verdicts, key=_remaining)
        if state.closest is None or refused or closest.remaining < state.closest.remaining:
            state.closest = closest
            state.headers["RateLimit"] = state_header(closest)
        if refused:
            for verdict in refused:
                self._metrics.rate_limited.labels(verdict.limit.name).inc()
            worst = max(refused, key=lambda v: v.retry_after)
            raise Problem(
                429,
                "rate-limited",
                f"rate limit {worst.limit.name!r} exceeded; retry later",
                headers={"Retry-After": str(max(1, whole_seconds(worst.retry_after)))},
            )


def _remaining(verdict: Verdict) -> int:
    return verdict.remaining


async def sweep_periodically(backend: LocalBackend, seconds: float = 1.0) -> None:
    """Forget idle subjects of a local backend: memory follows the active subjects."""
    while True:
        await asyncio.sleep(seconds)
        backend.sweep()
