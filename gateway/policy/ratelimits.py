"""Rate limit definitions, as ops write them in the policy files (§13).

Enforcement is `gateway.ratelimit`; here is only what a limit is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

By = Literal["key", "user", "ip"]
BY_VALUES: tuple[By, ...] = ("key", "user", "ip")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`limit` requests per `per_seconds` on average, at most `burst` at once, per `by`."""

    name: str
    limit: int
    per_seconds: float
    burst: int
    by: By
    # Stable for an unchanged definition: a reload keeps its counters, a change resets them.
    identity: str = field(init=False, compare=False, repr=False)
    # GCRA's emission interval (the average time between two admitted requests), and
    # how far ahead of now the theoretical arrival time may run (`burst` intervals).
    interval: float = field(init=False, compare=False, repr=False)
    tolerance: float = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        text = f"{self.name}\0{self.limit}\0{self.per_seconds!r}\0{self.burst}\0{self.by}"
        object.__setattr__(self, "identity", hashlib.sha256(text.encode()).hexdigest()[:16])
        object.__setattr__(self, "interval", self.per_seconds / self.limit)
        object.__setattr__(self, "tolerance", self.interval * self.burst)

    def describe(self) -> str:
        return f"{self.name}: {self.limit}/{self.per_seconds:g}s by {self.by}, burst {self.burst}"


def policy_header(limits: tuple[RateLimit, ...]) -> str:
    """`RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11): every limit of a route."""
    return ", ".join(
        f'"{limit.name}";q={limit.limit};w={_number(limit.per_seconds)}' for limit in limits
    )


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
