"""The local backend: GCRA state in this process only, bounded, with no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.policy.ratelimits import RateLimit
from gateway.ratelimit.gcra import Verdict, decide

Ask = tuple[RateLimit, str]  # a limit and the subject it counts (key id, user id or address)
MAX_SUBJECTS = 100_000


class LocalBackend:
    """One TAT per (limit definition, subject). A subject whose TAT lies in the past is
    indistinguishable from a new one, so it is dropped: idle subjects cost nothing."""

    def __init__(self, clock: Callable[[], float], max_subjects: int = MAX_SUBJECTS) -> None:
        self._clock = clock
        self._max = max_subjects
        self._tat: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    async def take(self, asks: Sequence[Ask]) -> list[Verdict]:
        return self.take_now(asks)

    def take_now(self, asks: Sequence[Ask]) -> list[Verdict]:
        """Admit (charging every limit) only if every limit admits; else charge nothing."""
        if len(asks) == 1:  # the common case, without the bookkeeping for several
            return [self.take_one(*asks[0])]
        now = self._clock()
        decided = []
        for limit, subject in asks:
            key = (limit.identity, subject)
            new_tat, verdict = decide(limit, self._tat.get(key), now)
            decided.append((key, new_tat, verdict))
        if all(verdict.allowed for _, _, verdict in decided):
            for key, new_tat, _ in decided:
                self._tat[key] = new_tat
            if len(self._tat) > self._max:
                self._make_room(now)
        return [verdict for _, _, verdict in decided]

    def take_one(self, limit: RateLimit, subject: str) -> Verdict:
        """One limit: admit (and charge) or not."""
        now = self._clock()
        key = (limit.identity, subject)
        new_tat, verdict = decide(limit, self._tat.get(key), now)
        if verdict.allowed:
            self._tat[key] = new_tat
            if len(self._tat) > self._max:
                self._make_room(now)
        return verdict

    def sweep(self) -> int:
        """Drop subjects whose quota is whole again; returns how many remain."""
        now = self._clock()
        for key in [key for key, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
        return len(self._tat)

    def _make_room(self, now: float) -> None:
        self.sweep()
        # Still full of busy subjects: forget the longest-standing ones (insertion order).
        excess = len(self._tat) - self._max
        for key in list(self._tat)[:excess]:
            del self._tat[key]
