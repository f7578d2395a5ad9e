"""GCRA (the generic cell rate algorithm): one stored time per (limit, subject).

The theoretical arrival time (TAT) advances by one emission interval per admitted
request; a request is admitted while the TAT stays within `burst` intervals of
now. A refused request changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.policy.ratelimits import RateLimit

_EPSILON = 1e-9  # float slack, so exactly `burst` requests at one instant all fit


@dataclass(slots=True)  # made once per limit per request: a NamedTuple's __new__ costs twice this
class Verdict:
    limit: RateLimit
    allowed: bool
    remaining: int  # requests still admitted right now
    reset: float  # seconds until the subject's quota is whole again
    retry_after: float  # when refused: seconds until one request would be admitted


def decide(limit: RateLimit, tat: float | None, now: float) -> tuple[float, Verdict]:
    """(the TAT to store if the request is admitted, the verdict)."""
    base = now if tat is None or tat < now else tat
    new_tat = base + limit.interval
    ahead = new_tat - now
    if ahead > limit.tolerance + _EPSILON:
        wait = ahead - limit.tolerance
        return base, Verdict(limit, False, 0, base - now, wait)
    remaining = math.floor((limit.tolerance - ahead) / limit.interval + _EPSILON)
    return new_tat, Verdict(limit, True, remaining, ahead, 0.0)


def whole_seconds(seconds: float) -> int:
    """Retry-After and `t`: whole seconds, rounded up."""
    return max(0, math.ceil(seconds - _EPSILON))


def state_header(verdict: Verdict) -> str:
    """`RateLimit`: the limit closest to refusing, its remaining quota and reset."""
    seconds = verdict.reset if verdict.allowed else verdict.retry_after
    # whole_seconds() inline (it runs on every response of a limited route): the
    # seconds are never negative, so the ceiling needs no floor at 0.
    return f'"{verdict.limit.name}";r={verdict.remaining};t={math.ceil(seconds - _EPSILON)}'
