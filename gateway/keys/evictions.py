"""The key store's TTL cache, counting evictions. A module of its own: the store is
compiled with mypyc, whose classes cannot subclass cachetools' (Python) classes."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from cachetools import TTLCache


class EvictionCounting(TTLCache[Hashable, Any]):
    """cachetools calls popitem() only to make room: count those as evictions."""

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float], on_evict: Callable[[], None]
    ) -> None:
        super().__init__(maxsize, ttl, timer=timer)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Hashable, Any]:
        item = super().popitem()
        self._on_evict()
        return item
