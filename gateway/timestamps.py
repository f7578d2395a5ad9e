"""RFC 3339 timestamps as the APIs and the CLI accept them: with an offset, always."""

from __future__ import annotations

from datetime import datetime


def parse_time(value: object) -> datetime:
    """An RFC 3339 timestamp with an offset; raises ValueError otherwise."""
    if not isinstance(value, str) or "T" not in value.upper():
        raise ValueError("must be an RFC 3339 timestamp")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("must carry a UTC offset")
    return parsed
