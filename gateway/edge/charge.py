"""The last check (§16): a key with credits pays the route's `cost`, or gets 429
`credits-exhausted` (with `Retry-After` up to its next refill). Runs after every
other check passed, so a refused request spends nothing."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from gateway.credits.ledger import UNLIMITED, CreditLedger, CreditsExhausted, CreditsUnavailable
from gateway.foundation.problems import Problem, database_unavailable
from gateway.foundation.soon import Later, Soon
from gateway.keys.principal import CreditAccount


def charge(ledger: CreditLedger, account: CreditAccount, cost: int) -> Soon[int | None]:
    """Spend `cost` credits; the balance after (for X-Credits-Remaining), or None when
    there is nothing to say (a free route before the key's first paid request, or a key
    that turned out to be unlimited). From the share this process holds at once;
    a `Later` only when the share must be fetched first."""
    if cost == 0:
        return ledger.balance(account.key_id)
    left = ledger.try_spend(account.key_id, cost)
    if left is not None:
        return left
    return Later(_charge_after_fetch(ledger, account, cost))


async def _charge_after_fetch(
    ledger: CreditLedger, account: CreditAccount, cost: int
) -> int | None:
    try:
        left = await ledger.spend(account.key_id, cost)
    except CreditsExhausted:
        raise exhausted(account) from None
    except CreditsUnavailable:
        raise database_unavailable() from None
    return None if left == UNLIMITED else left


def exhausted(account: CreditAccount) -> Problem:
    headers = {"X-Credits-Remaining": "0"}
    whose = "this key's user has" if account.pooled else "this key has"
    if account.refill is not None:
        now = datetime.now(UTC)
        wait = (account.refill.next_at(now) - now).total_seconds()
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return Problem(429, "credits-exhausted", f"{whose} no credits left", headers=headers)
