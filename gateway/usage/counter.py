"""Counting each key's requests in process, and writing the counts in one statement.

The request path adds to a dict; every `usage.flush_seconds` (and when the process
stops) the counts go to PostgreSQL in one statement that adds them to what other
processes and hosts wrote, so the totals are exact. A failed write (no primary,
during a failover) keeps the counts for the next one, up to `MAX_KEPT` rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from gateway.foundation.database import UNAVAILABLE, Conn, bounded

log = logging.getLogger("gateway.usage")
COUNTS = ("allowed", "rejected", "denied", "rate_limited", "credits_exhausted", "credits_spent")
ALLOWED, REJECTED, DENIED, RATE_LIMITED, CREDITS_EXHAUSTED, CREDITS_SPENT = range(6)

_ADD = """
INSERT INTO key_usage AS u (key_id, hour, allowed, rejected, denied, rate_limited,
                            credits_exhausted, credits_spent)
SELECT n.* FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::bigint[])
         AS n(key_id, hour, allowed, rejected, denied, rate_limited, credits_exhausted, credits_spent)
 WHERE EXISTS (SELECT 1 FROM api_keys AS k WHERE k.id = n.key_id)
ON CONFLICT (key_id, hour) DO UPDATE SET
    allowed = u.allowed + EXCLUDED.allowed,
    rejected = u.rejected + EXCLUDED.rejected,
    denied = u.denied + EXCLUDED.denied,
    rate_limited = u.rate_limited + EXCLUDED.rate_limited,
    credits_exhausted = u.credits_exhausted + EXCLUDED.credits_exhausted,
    credits_spent = u.credits_spent + EXCLUDED.credits_spent
"""


# Rows (key, hour) kept while the database cannot take them: a day of 4,000 busy keys.
MAX_KEPT = 100_000


class UsageCounter:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        max_kept: int = MAX_KEPT,
        dropped: Callable[[int], None] = lambda requests: None,
    ) -> None:
        self._clock = clock
        self._max_kept = max_kept
        self._dropped = dropped  # told how many requests' counts were let go
        # (key id, the hour's start in epoch seconds) -> counts in the order of COUNTS
        self.pending: dict[tuple[str, int], list[int]] = {}

    def count(self, key_id: str, kind: int, spent: int = 0) -> None:
        hour = int(self._clock()) // 3600 * 3600
        counts = self.pending.get((key_id, hour))
        if counts is None:
            counts = self.pending[(key_id, hour)] = [0, 0, 0, 0, 0, 0]
        counts[kind] += 1
        if spent:
            counts[CREDITS_SPENT] += spent

    async def flush(self, pool: asyncpg.Pool, seconds: float = 5.0) -> int:
        """Write what was counted since the last flush; how many (key, hour) rows."""
        pending, self.pending = self.pending, {}
        if not pending:
            return 0
        columns: list[list[object]] = [[] for _ in range(8)]
        for (key_id, hour), counts in pending.items():
            columns[0].append(key_id)
            columns[1].append(_utc(hour))
            for index, value in enumerate(counts):
                columns[2 + index].append(value)
        try:
            await bounded(pool, lambda conn: conn.execute(_ADD, *columns), seconds)
        except UNAVAILABLE as exc:
            log.warning("usage: cannot write counts (kept for the next flush): %s",
                        exc.__class__.__name__)  # fmt: skip
            self._keep(pending)
            return 0
        return len(pending)

    def _keep(self, pending: dict[tuple[str, int], list[int]]) -> None:
        """Put unwritten counts back, up to `max_kept` rows: beyond that (a long outage,
        many keys) the oldest rows' requests are let go and counted as dropped."""
        for where, counts in pending.items():
            kept = self.pending.setdefault(where, [0, 0, 0, 0, 0, 0])
            for index, value in enumerate(counts):
                kept[index] += value
        excess = len(self.pending) - self._max_kept
        if excess > 0:
            oldest = sorted(self.pending, key=lambda where: where[1])[:excess]
            lost = sum(sum(self.pending.pop(where)[:CREDITS_SPENT]) for where in oldest)
            log.error("usage: %d requests' counts dropped (over %d rows kept)",
                      lost, self._max_kept)  # fmt: skip
            self._dropped(lost)


async def prune(conn: Conn, retention_days: int) -> None:
    """Forget hours older than the retention (any process may run it, any number of times)."""
    await conn.execute(
        "DELETE FROM key_usage WHERE hour < now() - make_interval(days => $1)", retention_days
    )


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
