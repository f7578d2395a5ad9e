"""Whether this process wants new traffic: `/readyz` answers 503 once it is draining
(SIGTERM), while its listeners keep serving for `shutdown.drain_seconds` so load
balancers take it out of rotation before it stops accepting."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Readiness:
    draining: bool = False
