"""Overlapping reloads: an older reading of the directory never replaces a newer one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from gateway.observability.metrics import Metrics
from gateway.policy.loader import PolicySet
from gateway.policy.reloader import ActivePolicies
from gateway.policy.scopes import Catalogue

ROUTE = "upstream: core\nroutes:\n  - {methods: [GET], path: /v1/NAME, public: true}\n"


class _HeldAfterReading(ActivePolicies):
    """Reads the directory, then waits to be let go: a thread parse that is slow."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read = threading.Event()
        self.release = threading.Event()
        self.hold = False

    def _load(self) -> PolicySet:
        loaded = super()._load()
        if self.hold:
            self.hold = False
            self.read.set()
            self.release.wait(5)
        return loaded


async def test_a_slow_threaded_reload_does_not_undo_a_later_one(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(ROUTE.replace("NAME", "first"))
    policies = _HeldAfterReading(tmp_path, Catalogue({}), frozenset({"core"}), Metrics())
    (tmp_path / "routes.yaml").write_text(ROUTE.replace("NAME", "second"))
    policies.hold = True
    slow = asyncio.create_task(policies.reload_off_loop())  # reads "second", then waits
    await asyncio.to_thread(policies.read.wait, 5)
    (tmp_path / "routes.yaml").write_text(ROUTE.replace("NAME", "third"))
    assert policies.reload()  # SIGHUP, say: reads "third" and swaps it in
    policies.release.set()
    assert await slow
    router = policies.current.router
    assert router.match("GET", ["v1", "third"]) is not None
    assert router.match("GET", ["v1", "second"]) is None
