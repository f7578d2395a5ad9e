"""A key's credits as set by people: the balance and its refill schedule (contract §16).

`check_credits` is what the admin API, the CLI and the self-service API accept;
`Refill.next_at` gives `Retry-After` on a 429 `credits-exhausted`. The same
schedule runs in PostgreSQL (`gateway_last_refill`, migration 0006), where the
refills themselves happen; the tests hold the two to the same answers.
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Errors = list[tuple[str, str]]
Interval = Literal["day", "month"]
MAX_CREDITS = 10**15  # far beyond any plan, well inside bigint


@dataclass(frozen=True, slots=True)
class Refill:
    """`remaining` becomes `amount` (it replaces, it does not add) at 00:00 UTC every
    day, or on `day` of every month (the last day of a shorter month)."""

    interval: Interval
    amount: int
    day: int | None = None  # month only

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"interval": self.interval, "amount": self.amount}
        if self.day is not None:
            found["day"] = self.day
        return found

    @classmethod
    def stored(cls, value: str | dict[str, Any] | None) -> Refill | None:
        """The `credits_refill` column (asyncpg gives jsonb as text)."""
        found = json.loads(value) if isinstance(value, str) else value
        if not found:
            return None
        return cls(found["interval"], int(found["amount"]), found.get("day"))

    def next_at(self, now: datetime) -> datetime:
        """The first refill strictly after `now`."""
        day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.interval == "day":
            return day_start + timedelta(days=1)
        assert self.day is not None
        this_month = _due_in(day_start.year, day_start.month, self.day)
        if this_month > now:
            return this_month
        year, month = divmod(day_start.year * 12 + day_start.month, 12)  # the month after
        return _due_in(year, month + 1, self.day)


def _due_in(year: int, month: int, day: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(day, last), tzinfo=UTC)


def check_credits(value: object, field: str = "credits") -> Errors:
    """`null` (unlimited) or `{"remaining": N, "refill": null | {interval, amount, day}}`."""
    if value is None:
        return []
    if not isinstance(value, dict) or set(value) - {"remaining", "refill"}:
        return [(field, "must be null (unlimited) or {remaining, refill}")]
    errors = _check_refill(value.get("refill"), f"{field}.refill")
    if "remaining" not in value and value.get("refill") is not None:
        return errors  # starts full: the refill's amount
    return check_balance(value.get("remaining"), f"{field}.remaining") + errors


def check_balance(value: object, field: str) -> Errors:
    if not _whole(value) or not 0 <= value <= MAX_CREDITS:  # type: ignore[operator]
        return [(field, f"must be a whole number from 0 to {MAX_CREDITS}")]
    return []


def _check_refill(value: object, field: str) -> Errors:
    if value is None:
        return []
    if not isinstance(value, dict) or set(value) - {"interval", "amount", "day"}:
        return [(field, "must be null or {interval, amount, day}")]
    errors: Errors = []
    interval, amount, day = value.get("interval"), value.get("amount"), value.get("day")
    if interval not in ("day", "month"):
        errors.append((f"{field}.interval", "must be day or month"))
    if not _whole(amount) or not 1 <= amount <= MAX_CREDITS:  # type: ignore[operator]
        errors.append((f"{field}.amount", f"must be a whole number from 1 to {MAX_CREDITS}"))
    if interval == "day" and day is not None:
        errors.append((f"{field}.day", "only a monthly refill has a day"))
    if interval == "month" and (not _whole(day) or not 1 <= day <= 31):  # type: ignore[operator]
        errors.append((f"{field}.day", "a monthly refill needs a day from 1 to 31"))
    return errors


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normal_credits(value: dict[str, Any]) -> tuple[int, Refill | None]:
    """A checked `credits` object as (remaining, refill); without `remaining` a key
    with a refill starts full."""
    found = value.get("refill")
    refill = (
        None if found is None else Refill(found["interval"], int(found["amount"]), found.get("day"))
    )
    remaining = value.get("remaining", refill.amount if refill is not None else 0)
    return int(remaining), refill
