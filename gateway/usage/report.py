"""A key's usage as the APIs and the CLI show it: every bucket of a range, zeros included."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.foundation.database import Conn
from gateway.foundation.timestamps import parse_time
from gateway.usage.counter import COUNTS

Errors = list[tuple[str, str]]
MAX_BUCKETS = 2000
STEPS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_DEFAULT_SPAN = {"hour": timedelta(hours=48), "day": timedelta(days=30)}

_BUCKETS = f"""
SELECT b.start, {", ".join(f"coalesce(sum(u.{name}), 0)::bigint AS {name}" for name in COUNTS)}
  FROM unnest($2::timestamptz[]) AS b(start)
  LEFT JOIN key_usage AS u
    ON u.key_id = $1 AND u.hour >= b.start AND u.hour < b.start + $3::interval
 GROUP BY b.start ORDER BY b.start
"""


@dataclass(frozen=True, slots=True)
class UsageRange:
    granularity: str
    starts: tuple[datetime, ...]  # every bucket's start, UTC


def parse_range(query: Mapping[str, str], now: datetime) -> UsageRange | Errors:
    """`from`, `to` (RFC 3339, optional) and `granularity` (hour | day, default day):
    buckets aligned to UTC hours or days, the one holding `to` included."""
    errors: Errors = [
        (name, "unknown parameter") for name in sorted(set(query) - {"from", "to", "granularity"})
    ]
    granularity = query.get("granularity", "day")
    if granularity not in STEPS:
        return [*errors, ("granularity", "must be hour or day")]
    step = STEPS[granularity]
    bounds: dict[str, datetime] = {}
    for name in ("from", "to"):
        if name in query:
            try:
                bounds[name] = parse_time(query[name]).astimezone(UTC)
            except ValueError as exc:
                errors.append((name, str(exc)))
    if errors:
        return errors
    end = bounds.get("to", now.astimezone(UTC))
    start = _floor(bounds.get("from", end - _DEFAULT_SPAN[granularity] + step), granularity)
    end = _floor(end, granularity)
    if start > end:
        return [("from", "must not be after to")]
    count = int((end - start) / step) + 1
    if count > MAX_BUCKETS:
        return [("from", f"the range holds {count} {granularity}s; at most {MAX_BUCKETS}")]
    return UsageRange(granularity, tuple(start + step * i for i in range(count)))


def _floor(when: datetime, granularity: str) -> datetime:
    when = when.replace(minute=0, second=0, microsecond=0)
    return when.replace(hour=0) if granularity == "day" else when


async def buckets(conn: Conn, key_id: Any, wanted: UsageRange) -> list[dict[str, Any]]:
    rows = await conn.fetch(_BUCKETS, key_id, list(wanted.starts), STEPS[wanted.granularity])
    return [
        {"start": row["start"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
         **{name: row[name] for name in COUNTS}}
        for row in rows
    ]  # fmt: skip


def usage_json(key_id: str, wanted: UsageRange, found: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key_id": key_id, "granularity": wanted.granularity, "buckets": found}


async def recent_totals(conn: Conn, key_ids: list[str], days: int = 30) -> dict[str, int]:
    """Requests of each key over the last `days` days, refused ones included."""
    rows = await conn.fetch(
        "SELECT key_id::text, sum(allowed + rejected + denied + rate_limited"
        " + credits_exhausted)::bigint AS requests FROM key_usage"
        " WHERE key_id = ANY($1::uuid[]) AND hour >= now() - make_interval(days => $2)"
        " GROUP BY key_id",
        key_ids,
        days,
    )
    return {row["key_id"]: row["requests"] for row in rows}
