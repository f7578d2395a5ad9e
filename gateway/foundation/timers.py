"""A deadline that moves often but rarely fires: one event-loop timer per owner.

Scheduling and cancelling a loop timer per request costs more than a request's
routing; a keep-alive connection moves its deadline on every request. Here the
deadline is a number, and the one timer, when it fires early, re-arms itself
for wherever the deadline has moved to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._at: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def set(self, seconds: float) -> None:
        """Expire `seconds` from now (replacing any earlier setting)."""
        self._at = at = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(at, self._fire)

    def clear(self) -> None:
        """No deadline for now; the timer, if any, finds nothing to do when it fires."""
        self._at = None

    def stop(self) -> None:
        """No deadline any more: the timer goes too."""
        self._at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        at = self._at
        if at is None:
            return
        if at > self._loop.time():
            self._timer = self._loop.call_at(at, self._fire)
            return
        self._at = None
        self._on_expiry()
