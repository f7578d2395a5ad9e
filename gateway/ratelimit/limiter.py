"""The rate-limit stage of the pipeline (§13): which limits a request counts against, the
429, and the draft-ietf-httpapi-ratelimit-headers-11 fields on every response of a
limited route. `by: ip` limits run before authentication, the others after authorization."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.keys.principal import Principal
from gateway.observability.metrics import Metrics
from gateway.policy.ratelimits import policy_header
from gateway.policy.routing import Route
from gateway.problems import Problem
from gateway.ratelimit.gcra import Verdict, state_header, whole_seconds
from gateway.ratelimit.local import Ask, LocalBackend
from gateway.ratelimit.shared import BackendUnavailable


class Backend(Protocol):
    async def take(self, asks: Sequence[Ask]) -> list[Verdict]: ...


@dataclass(slots=True)
class LimitState:
    """What a request's limits said so far: the headers every response of it carries."""

    headers: dict[str, str] = field(default_factory=dict)
    closest: Verdict | None = None


class RateLimiter:
    def __init__(self, backend: Backend, metrics: Metrics) -> None:
        self.backend = backend
        self._metrics = metrics
        # The local backend answers at once: no coroutine per request for it.
        self._local = backend if isinstance(backend, LocalBackend) else None

    async def before_authentication(self, route: Route, client: str, state: LimitState) -> None:
        state.headers["RateLimit-Policy"] = route.rate_limit_policy
        if route.address_limits:
            await self._admit([(limit, client) for limit in route.address_limits], state)

    async def after_authorization(
        self, route: Route, principal: Principal | None, state: LimitState
    ) -> None:
        if principal is None or not route.identity_limits:
            return
        limits = route.identity_limits
        own = principal.limits
        if own is not None and any(limit.name in own for limit in limits):
            # This key's own numbers: a limit of their own (own identity, own counter,
            # shared through Redis like any limit), and said so in RateLimit-Policy.
            limits = tuple(own.get(limit.name, limit) for limit in limits)
            named = {limit.name: limit for limit in (*route.address_limits, *limits)}
            state.headers["RateLimit-Policy"] = policy_header(tuple(named.values()))
        asks = [
            (limit, principal.key_id if limit.by == "key" else principal.user_id)
            for limit in limits
        ]
        await self._admit(asks, state)

    async def _admit(self, asks: list[Ask], state: LimitState) -> None:
        try:
            if self._local is not None:
                verdicts = self._local.take_now(asks)
            else:
                verdicts = await self.backend.take(asks)
        except BackendUnavailable:
            raise Problem(
                503,
                "rate-limit-unavailable",
                "rate limits cannot be checked right now; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
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
