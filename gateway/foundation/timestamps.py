"""RFC 3339 timestamps as the APIs and the CLI accept them: with an offset, always."""

from __future__ import annotations

from datetime import datetime


def parse_time(value: object) -> datetime:
    """An RFC 3339 timestamp with an offset; raises ValueError otherwise."""
    expected = "an RFC 3339 time with an offset, e.g. 2027-01-31T00:00:00Z"
    if not isinstance(value, str) or "T" not in value.upper():
        raise ValueError(f"must be {expected}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be {expected}, not {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"must carry a UTC offset: {expected}")
    return parsed
