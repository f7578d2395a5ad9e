"""The active policy set, swapped whole on file change or SIGHUP.

A set with any error is refused and the last good one keeps serving. Each
request reads `current` once, so it is decided by exactly one version.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import watchfiles

from gateway.observability.metrics import Metrics
from gateway.policy.loader import PolicyError, PolicySet, load_dir
from gateway.policy.scopes import Catalogue

log = logging.getLogger("gateway.policy")


class ActivePolicies:
    def __init__(
        self, directory: Path, catalogue: Catalogue, upstreams: frozenset[str], metrics: Metrics
    ) -> None:
        self.directory = directory
        self._catalogue = catalogue
        self._upstreams = upstreams
        self._metrics = metrics
        self.current: PolicySet = load_dir(directory, catalogue, upstreams)
        self.last_error: str | None = None
        # Reloads can overlap (the file watcher's, parsed in a thread, and SIGHUP's):
        # each takes a ticket, and one that began before the set in `current` was read
        # has an older reading of the directory, so it swaps nothing.
        self._tickets = 0
        self._current_ticket = 0
        metrics.policy_routes.set(len(self.current.router.routes))

    def _load(self) -> PolicySet:
        return load_dir(self.directory, self._catalogue, self._upstreams)

    def reload(self) -> bool:
        """Load the directory again; swap only a fully valid set."""
        ticket = self._take_ticket()
        try:
            candidate = self._load()
        except PolicyError as exc:
            return self._refuse(exc, ticket)
        return self._swap(candidate, ticket)

    async def reload_off_loop(self) -> bool:
        """`reload()`, parsing in a thread so a large set does not stall requests."""
        ticket = self._take_ticket()
        loop = asyncio.get_running_loop()
        try:
            candidate = await loop.run_in_executor(None, self._load)
        except PolicyError as exc:
            return self._refuse(exc, ticket)
        return self._swap(candidate, ticket)

    def _take_ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def _refuse(self, exc: PolicyError, ticket: int) -> bool:
        if ticket < self._current_ticket:
            return False  # an older reading of the directory; a newer one has answered
        self.last_error = str(exc)
        self._metrics.policy_reloads.labels("failure").inc()
        for problem in exc.problems:
            log.error(
                "policy reload refused, keeping version %s: %s", self.current.version, problem
            )
        return False

    def _swap(self, candidate: PolicySet, ticket: int) -> bool:
        # Runs on the event loop: requests see the old set or the new, never a mix.
        if ticket < self._current_ticket:
            return True  # valid, but older than the set serving now
        self._current_ticket = ticket
        self.last_error = None
        self._metrics.policy_reloads.labels("success").inc()
        if candidate.version != self.current.version:
            log.info("policy version %s -> %s", self.current.version, candidate.version)
            self.current = candidate
            self._metrics.policy_routes.set(len(candidate.router.routes))
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change in the directory until `stop` is set."""
        async for _changes in watchfiles.awatch(
            self.directory, stop_event=stop, debounce=200, step=50, recursive=False
        ):
            await self.reload_off_loop()
