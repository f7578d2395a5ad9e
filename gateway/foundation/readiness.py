"""Whether this process wants new traffic, and what it is serving without.

`/readyz` answers 503 once the process is draining (SIGTERM), while its listeners
keep serving for `shutdown.drain_seconds` so load balancers take it out of rotation
before it stops accepting. It never answers 503 only because PostgreSQL or Redis is
down: cached keys are served and limits fall back to `on_backend_error`, so a
database blip must not take every replica out of the balancer at once. What is
degraded is said in the body and in `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def _never() -> bool:
    return False


def _no_redis() -> str:
    return "off"


@dataclass
class Readiness:
    draining: bool = False
    # Set by the resources that know: the key store's view of PostgreSQL, and the
    # shared rate-limit backend's of Redis ("ok", "unavailable", or "off" without one).
    database_down: Callable[[], bool] = field(default=_never)
    redis: Callable[[], str] = field(default=_no_redis)
