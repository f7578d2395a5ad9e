"""The active policy set, swapped whole on file change or SIGHUP.

A set with any error is refused and the last good one keeps serving. Each
request reads `current` once, so it is decided by exactly one version.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import watchfiles

from gateway.metrics import Metrics
from gateway.policy import PolicyError, PolicySet, load_dir
from gateway.scopes import Catalogue

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
        metrics.policy_routes.set(len(self.current.router.routes))

    def reload(self) -> bool:
        """Load the directory again; swap only a fully valid set."""
        try:
            candidate = load_dir(self.directory, self._catalogue, self._upstreams)
        except PolicyError as exc:
            self.last_error = str(exc)
            self._metrics.policy_reloads.labels("failure").inc()
            for problem in exc.problems:
                log.error(
                    "policy reload refused, keeping version %s: %s", self.current.version, problem
                )
            return False
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
            self.reload()
