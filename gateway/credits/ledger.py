"""Spending a key's credits in this process, with no database round trip per request.

A process holds a share of each busy key's balance (`shares`) and spends what it
has claimed of it in memory. Before the claimed part runs out, a background
statement claims more, or takes a new share from the key; a request waits for the
database only when the claimed part is already spent (a key's first request in
this process, the last credits of a balance). Every `sync_interval_seconds` the
process reports its spending and renews its shares' lease; shares unused for
`idle_seconds`, and all of them when the process stops, are given back exactly.

Never overspent: a credit is spent only once claimed in PostgreSQL, and a share
whose holder died gives back only what it never claimed.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.credits import shares
from gateway.credits.shares import Balances, Taken
from gateway.foundation.config import Credits
from gateway.foundation.database import UNAVAILABLE, Conn, bounded

log = logging.getLogger("gateway.credits")
Clock = Callable[[], float]
UNLIMITED = -1  # what `spend` answers for a key PostgreSQL says is unlimited
_EXHAUSTED_SECONDS = 1.0  # an exhausted key is asked about again at most this often
# A holder unheard of for this many sync intervals counts as gone for the balance shown.
_SILENT_INTERVALS = 3


class Fetched(enum.Enum):
    FETCHED = "fetched"
    EMPTY = "empty"  # the key had nothing left that no process holds
    MOVED = "moved"  # the key was rotated: its balance is the new key's (`moved_to`)
    UNREACHABLE = "unreachable"


class CreditsExhausted(Exception):
    """Not enough credits for this request."""


class CreditsUnavailable(Exception):
    """PostgreSQL could not be asked for more (the caller answers 503)."""


@dataclass(slots=True)
class Share:
    """This process's share of one key's balance, as far as it knows."""

    amount: int = 0  # taken from the key into this share
    claimed: int = 0  # of which may be spent
    spent: int = 0
    others: int = 0  # the rest of the balance when last asked
    used_at: float = 0.0
    unlimited: bool = False
    exhausted_until: float = 0.0
    step: int = 1  # what the last fetch claimed: the next starts once less is left
    taken: int = 0  # the last take's size: a claim is at most a quarter of it
    fetched_at: float = 0.0  # when the last fetch started, and what was spent then:
    spent_then: int = 0  # the spending rate since sizes the next claim
    moved_to: str | None = None  # a rotated key's balance is spent from here
    waiting: int = 0  # credits wanted by requests waiting for the fetch in flight
    # The statement in flight for this share (single flight).
    task: asyncio.Task[Fetched] | None = field(default=None, repr=False)

    def balance(self) -> int:
        return max(0, self.others + self.amount - self.spent)


class CreditLedger:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Credits,
        *,
        clock: Clock = time.monotonic,
        holder: str | None = None,
        timeout: float = 5.0,
        kind: Balances = shares.KEYS,
    ) -> None:
        """`kind`: the balances this ledger spends, keys' own or users' pools (§21)."""
        self._pool = pool
        self._kind = kind
        self._timeout = timeout  # a statement with its wait for a connection
        self._settings = settings
        self._clock = clock
        self.holder = holder or f"{uuid.uuid4()}"
        self.shares: dict[str, Share] = {}
        self._silence = _SILENT_INTERVALS * settings.sync_interval_seconds
        # One report at a time: two that overlapped could commit an older snapshot of
        # what was spent after a newer one (the periodic report and an explicit one).
        self._reporting = asyncio.Lock()

    def try_spend(self, account: str, cost: int) -> int | None:
        """The balance after spending `cost` from what is claimed, or None when the
        database must be asked first (then `spend`)."""
        share = self.shares.get(account)
        if share is None or share.spent + cost > share.claimed:
            return None
        share.spent += cost
        share.used_at = self._clock()
        if share.task is None and share.claimed - share.spent < share.step:
            self._sync(account, share)
        return share.balance()

    def balance(self, account: str) -> int | None:
        """The balance as this process knows it, if it holds a share of it."""
        share = self.shares.get(account)
        return None if share is None or share.unlimited else share.balance()

    async def spend(self, account: str, cost: int) -> int:
        """Spend `cost`, asking PostgreSQL for more when needed: the balance after, or
        `UNLIMITED`; raises `CreditsExhausted` or `CreditsUnavailable`."""
        for _ in range(8):  # each fetch brings enough for those waiting when it starts
            share = self.shares.setdefault(account, Share())
            if share.unlimited:
                return UNLIMITED
            if share.spent + cost <= share.claimed:
                share.spent += cost
                share.used_at = self._clock()
                return share.balance()
            if share.moved_to is not None:
                # Rotated: what this share claimed is spent first, then the new key's
                # balance (the key store learns the new account by NOTIFY, a little later).
                account = share.moved_to
                continue
            if share.exhausted_until > self._clock():
                raise CreditsExhausted(account)
            task = share.task
            if task is None or task.done():  # (a finished one is cleared by a callback)
                task = self._sync(account, share)
            share.waiting += cost
            try:
                fetched = await asyncio.shield(task)
            finally:
                share.waiting -= cost
            if fetched is Fetched.UNREACHABLE:
                raise CreditsUnavailable(account)
            if fetched is Fetched.MOVED:
                continue
            if fetched is Fetched.EMPTY and share.spent + cost > share.claimed:
                # Other holders may give back what they hold: ask again sooner then.
                wait = _EXHAUSTED_SECONDS if share.others == 0 else _EXHAUSTED_SECONDS / 4
                share.exhausted_until = self._clock() + wait
                raise CreditsExhausted(account)
        raise CreditsUnavailable(account)  # outrun eight fetches in a row: retry shortly

    def changed(self, account: str | None) -> None:
        """A key's credits were changed (NOTIFY), or any key's may have been (None: the
        listener missed messages): ask again rather than trust what was learnt."""
        found = self.shares.values() if account is None else [self.shares.get(account)]
        for share in found:
            if share is not None:
                share.unlimited = False
                share.exhausted_until = 0.0

    def _sync(self, account: str, share: Share) -> asyncio.Task[Fetched]:
        task = asyncio.create_task(self._fetch(account, share))
        share.task = task
        task.add_done_callback(lambda _: _finished(share, task))
        return task

    async def _fetch(self, account: str, share: Share) -> Fetched:
        """Claim more of the share, or take more into it once what is unclaimed would
        not cover a claim; enough for every request waiting when it starts."""
        settings = self._settings
        need = max(0, share.spent + share.waiting - share.claimed)
        step = max(need, self._claim_step(share))
        lease, silence = settings.lease_seconds, self._silence

        async def ask(conn: Conn) -> Taken | None:
            if share.amount - share.claimed >= step:
                claimed = await shares.claim(
                    conn, self._kind, account, self.holder, step, share.spent, lease, silence
                )
                if claimed is not None:
                    return claimed
            cap = max(settings.max_share, need)
            return await shares.take(
                conn, self._kind, account, self.holder, need, cap, share.spent, lease, step, silence
            )

        try:
            found = await bounded(self._pool, ask, self._timeout)
        except UNAVAILABLE as exc:
            log.warning("credits: cannot reach the database: %s", exc.__class__.__name__)
            return Fetched.UNREACHABLE
        if found is None:
            share.unlimited = True
            return Fetched.FETCHED
        if found.fresh:
            share.spent = 0  # the old share was swept: what was claimed of it is spent
        share.step = max(1, found.claimed - share.claimed)
        if found.taken:
            share.taken = found.taken
        share.amount, share.claimed = found.amount, found.claimed
        if found.others is not None:
            share.others = found.others
        if found.unheld == 0 and found.moved_to is not None:
            share.moved_to = found.moved_to
            return Fetched.MOVED
        return Fetched.EMPTY if found.unheld == 0 else Fetched.FETCHED

    def _claim_step(self, share: Share) -> int:
        """About what this share will spend in one sync interval, at the rate it spent
        since the last fetch (at most a quarter of the last take). What a holder that
        dies has claimed and not reported is lost to the key (never overspent), so a
        claim asks for what will be spent before the next report, not more."""
        now, before, spent_before = self._clock(), share.fetched_at, share.spent_then
        share.fetched_at, share.spent_then = now, share.spent
        elapsed, spent = now - before, share.spent - spent_before
        if not before or elapsed <= 0 or spent <= 0:
            return 1
        rate = spent / elapsed
        step = math.ceil(rate * self._settings.sync_interval_seconds)
        return max(1, min(step, math.ceil(share.taken / 4) or step))

    async def report(self) -> None:
        """Report spending, renew leases, give idle shares back (every sync interval)."""
        async with self._reporting:
            await self._report()

    async def _report(self) -> None:
        now = self._clock()
        idle = [
            account
            for account, share in self.shares.items()
            if share.task is None and now - share.used_at > self._settings.idle_seconds
        ]
        if idle:
            await self.give_back(idle)
        held = {a: s.spent for a, s in self.shares.items() if s.amount and s.task is None}
        if not held:
            return
        lease = self._settings.lease_seconds
        alive = await bounded(
            self._pool,
            lambda conn: shares.renew(conn, self._kind, self.holder, held, lease, self._silence),
            self._timeout,
        )
        for account in set(held) - alive:
            share = self.shares.get(account)
            if share is not None and share.task is None:
                # Swept (this process was out of touch too long): what it claimed was
                # counted as spent, and nothing more of it may be.
                share.amount = share.claimed = share.spent = 0

    async def give_back(self, accounts: list[str] | None = None) -> None:
        """Give shares back exactly (all of them when stopping). Until the statement
        has run, nothing more is spent from them: a request waits, then starts a new
        share, so no credit is both given back and spent."""
        chosen = {
            account: share
            for account in (list(self.shares) if accounts is None else accounts)
            if (share := self.shares.get(account)) is not None
        }
        while pending := [share.task for share in chosen.values() if share.task is not None]:
            await asyncio.wait(pending)
        returning = asyncio.create_task(self._give_back(chosen))
        for share in chosen.values():
            share.claimed = share.spent
            share.task = returning
            returning.add_done_callback(functools.partial(_finished, share))
        await asyncio.shield(returning)

    async def _give_back(self, chosen: dict[str, Share]) -> Fetched:
        spent = {account: share.spent for account, share in chosen.items() if share.amount}
        try:
            if spent:
                await bounded(
                    self._pool,
                    lambda conn: shares.give_back(conn, self._kind, self.holder, spent),
                    self._timeout,
                )
        except UNAVAILABLE as exc:
            # Kept, as idle shares: given back at a later round (a failover over within
            # the lease loses nothing), or spent from again meanwhile. A share swept
            # before that counts what it claimed as spent: never overspent.
            log.warning("credits: cannot give shares back (kept): %s", exc.__class__.__name__)
            return Fetched.UNREACHABLE
        for account, share in chosen.items():
            if self.shares.get(account) is share:
                del self.shares[account]
        return Fetched.FETCHED

    async def sweep(self) -> int:
        return await bounded(self._pool, lambda conn: shares.sweep(conn, self._kind), self._timeout)

    async def run(self, refill: Callable[[], Coroutine[Any, Any, int]] | None = None) -> None:
        """Report every sync interval; sweep (and refill) every tenth of the lease."""
        settings = self._settings
        next_sweep = 0.0
        while True:
            await asyncio.sleep(settings.sync_interval_seconds)
            try:
                await self.report()
                if self._clock() >= next_sweep:
                    next_sweep = self._clock() + settings.lease_seconds / 10
                    await self.sweep()
                    if refill is not None:
                        await refill()
            except UNAVAILABLE as exc:
                log.warning("credits: upkeep failed: %s", exc.__class__.__name__)


def _finished(share: Share, task: asyncio.Task[Fetched]) -> None:
    if share.task is task:
        share.task = None
