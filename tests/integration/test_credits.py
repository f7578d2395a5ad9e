"""Credits against a real PostgreSQL: shares never overspend, dead holders' shares come
back, refills run once whoever runs them, and Python and SQL agree on the schedule."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway.audit.events import Actor
from gateway.credits import balance
from gateway.credits.ledger import CreditLedger, CreditsExhausted
from gateway.credits.refill import Refill, check_credits
from gateway.foundation.config import Config, Credits
from gateway.keys import management, validation
from gateway.policy.scopes import Catalogue

CATALOGUE = Catalogue({name: d.implies for name, d in Config().scopes.items()})
FAST = Credits(max_share=1000, lease_seconds=0.9, sync_interval_seconds=0.3, idle_seconds=60)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    assert pool is not None
    yield pool
    await pool.close()


async def _key(pool: asyncpg.Pool, credits: dict[str, Any] | None) -> str:
    body = {"user_id": "u-credits", "name": "n", "scopes": ["me:read"], "credits": credits}
    spec = validation.validate_key(body, CATALOGUE, datetime.now(UTC))
    assert not isinstance(spec, list), spec
    async with pool.acquire() as conn:
        created = await management.create_key(conn, spec, "gwk", actor=Actor("cli"))
    return str(created["id"])


async def _credits(pool: asyncpg.Pool, key_id: str) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        found: dict[str, Any] | None = (await management.get_key(conn, key_id))["credits"]
    return found


async def _spend_all(ledger: CreditLedger, key_id: str, seconds: float) -> int:
    """Spend one credit at a time from 16 concurrent workers for `seconds`, as a busy
    process would; how many were admitted."""
    admitted = 0
    deadline = asyncio.get_running_loop().time() + seconds

    async def worker() -> None:
        nonlocal admitted
        while asyncio.get_running_loop().time() < deadline:
            if ledger.try_spend(key_id, 1) is not None:
                admitted += 1
                await asyncio.sleep(0)
                continue
            try:
                await ledger.spend(key_id, 1)
                admitted += 1
            except CreditsExhausted:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker() for _ in range(16)))
    return admitted


async def test_two_holders_racing_never_overspend_and_use_almost_all(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, {"remaining": 1000})
    one, two = CreditLedger(pool, FAST), CreditLedger(pool, FAST)
    admitted = await asyncio.gather(_spend_all(one, key_id, 3), _spend_all(two, key_id, 3))
    # Each holder gives back what it did not spend; nothing more can be admitted after.
    await asyncio.gather(one.give_back(), two.give_back())
    assert sum(admitted) <= 1000
    left = await _credits(pool, key_id)
    assert left is not None and sum(admitted) + left["remaining"] == 1000
    assert sum(admitted) >= 990, admitted


async def test_a_dead_holder_gives_back_only_what_it_never_claimed(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, {"remaining": 800})
    dead = CreditLedger(pool, FAST)
    for _ in range(5):
        await dead.spend(key_id, 1)
    share = dead.shares[key_id]
    assert share.amount == 100 and 5 <= share.claimed < share.amount  # an eighth, a quarter claimed
    # The holder vanishes without a word: its lease runs out, a sweep by anyone returns
    # what it never claimed — never a credit it may have spent.
    await asyncio.sleep(FAST.lease_seconds + 0.1)
    assert await CreditLedger(pool, FAST).sweep() == 1
    found = await _credits(pool, key_id)
    assert found is not None and found["remaining"] == 800 - share.claimed
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM credit_shares WHERE key_id = $1::uuid", key_id
            )
            == 0
        )


async def test_a_silent_holders_share_shows_only_what_will_come_back(pool: asyncpg.Pool) -> None:
    """The balance shown is what can be spent: once a holder has not reported for three
    sync intervals, its claimed part (which it may have spent) no longer counts, and
    what it never claimed does — before its lease runs out and a sweep returns it."""
    settings = Credits(max_share=1000, lease_seconds=30, sync_interval_seconds=0.2)
    key_id = await _key(pool, {"remaining": 800})
    dead = CreditLedger(pool, settings)
    for _ in range(5):
        await dead.spend(key_id, 1)
    await dead.report()
    share = dead.shares[key_id]
    assert await _credits(pool, key_id) == {"remaining": 795, "refill": None}
    await asyncio.sleep(3 * 0.2 + 0.1)  # silent from now on
    shown = await _credits(pool, key_id)
    assert shown == {"remaining": 800 - share.claimed, "refill": None}
    # A refill replaces the balance: the silent share's claimed part is not held.
    async with pool.acquire() as conn:
        await management.change_credits(conn, key_id, {"set": 100}, actor=Actor("cli"))
    assert await _credits(pool, key_id) == {"remaining": 100, "refill": None}


async def test_a_rotation_refuses_nothing_the_balance_allows(pool: asyncpg.Pool) -> None:
    """A process spending the old key when it is rotated: once its claimed part is spent,
    it spends from the new key's balance (where rotation moved it) without a refusal,
    before and after the key store learns of the rotation; 70 credits admit 70."""
    key_id = await _key(pool, {"remaining": 70})
    ledger = CreditLedger(pool, FAST)
    admitted = 0
    for _ in range(5):
        await ledger.spend(key_id, 1)
        admitted += 1
    async with pool.acquire() as conn:
        new = await management.rotate_key(conn, key_id, 60, "gwk", actor=Actor("cli"))
    while True:
        try:
            if ledger.try_spend(key_id, 1) is None:
                await ledger.spend(key_id, 1)
        except CreditsExhausted:
            break
        admitted += 1
        assert admitted <= 70
    await ledger.give_back()
    assert admitted == 70
    assert await _credits(pool, new["id"]) == {"remaining": 0, "refill": None}


async def test_a_holder_that_was_swept_stops_at_what_it_claimed(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, {"remaining": 800})
    slow = CreditLedger(pool, FAST)
    await slow.spend(key_id, 1)
    claimed = slow.shares[key_id].claimed
    await asyncio.sleep(FAST.lease_seconds + 0.1)
    await CreditLedger(pool, FAST).sweep()
    spent = 1
    while slow.try_spend(key_id, 1) is not None:
        spent += 1
    assert spent == claimed  # then it must ask, and gets a fresh share
    await slow.spend(key_id, 1)
    await slow.give_back()
    found = await _credits(pool, key_id)
    assert found is not None and found["remaining"] == 800 - claimed - 1


async def test_balance_shown_counts_what_holders_have_not_spent(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, {"remaining": 400})
    ledger = CreditLedger(pool, FAST)
    for _ in range(7):
        await ledger.spend(key_id, 1)
    await ledger.report()  # what a process sends every sync interval
    assert await _credits(pool, key_id) == {"remaining": 393, "refill": None}
    assert ledger.balance(key_id) == 393


async def test_unlimited_after_all_is_learnt_and_forgotten_on_change(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, None)
    ledger = CreditLedger(pool, FAST)
    assert await ledger.spend(key_id, 1) == -1  # unlimited: nothing to count
    async with pool.acquire() as conn:
        await management.change_credits(conn, key_id, {"set": 2}, actor=Actor("cli"))
    ledger.changed(key_id)  # what the NOTIFY of the change does
    assert await ledger.spend(key_id, 1) == 1
    assert await ledger.spend(key_id, 1) == 0
    with pytest.raises(CreditsExhausted):
        await ledger.spend(key_id, 1)


async def test_set_increment_decrement_and_their_audit(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, {"remaining": 10})
    async with pool.acquire() as conn:
        change = management.change_credits
        assert await change(conn, key_id, {"increment": 5}, actor=Actor("cli")) == {
            "remaining": 15,
            "refill": None,
        }
        assert (await change(conn, key_id, {"decrement": 20}, actor=Actor("cli")) or {})[
            "remaining"
        ] == 0
        assert await change(conn, key_id, {"set": None}, actor=Actor("cli")) is None
        with pytest.raises(management.Conflict):
            await change(conn, key_id, {"increment": 1}, actor=Actor("cli"))
        rows = await conn.fetch(
            "SELECT details FROM audit_events WHERE key_id = $1::uuid AND action = 'key.credits'"
            " ORDER BY id",
            key_id,
        )
    assert len(rows) == 3


def test_bad_credits_are_refused_naming_the_field() -> None:
    assert check_credits({"remaining": -1}) == [
        ("credits.remaining", "must be a whole number from 0 to 1000000000000000")
    ]
    assert [
        f for f, _ in check_credits({"refill": {"interval": "day", "amount": 5, "day": 3}})
    ] == ["credits.refill.day"]
    assert [
        f for f, _ in check_credits({"refill": {"interval": "month", "amount": 0, "day": 1}})
    ] == ["credits.refill.amount"]
    assert [f for f, _ in check_credits({"refill": {"interval": "month", "amount": 1}})] == [
        "credits.refill.day"
    ]
    assert balance.check_change({"set": 1, "increment": 2})[0][0] == "body"
    assert balance.check_change({"decrement": 1.5})[0][0] == "decrement"
    assert check_credits({"refill": {"interval": "day", "amount": 5}}) == []  # starts full


async def test_refill_runs_once_however_many_run_it(pool: asyncpg.Pool) -> None:
    key_id = await _key(pool, {"remaining": 3, "refill": {"interval": "day", "amount": 50}})
    holder = CreditLedger(pool, FAST)
    await holder.spend(key_id, 1)  # a share is held across the refill
    await holder.report()  # (its spending as last reported is what the refill counts)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET credits_refilled_at = now() - interval '2 days' WHERE id = $1::uuid",
            key_id,
        )

    async def refill() -> int:
        async with pool.acquire() as conn:
            return await balance.refill_due(conn)

    counts = await asyncio.gather(*(refill() for _ in range(6)))
    assert sum(counts) >= 1
    async with pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT actor, details FROM audit_events WHERE key_id = $1::uuid AND action = 'key.refilled'",
            key_id,
        )
    assert len(events) == 1 and events[0]["actor"] == "system"
    # Replacing, not adding: 50 in all, the part the holder has not spent included.
    assert await _credits(pool, key_id) == {
        "remaining": 50,
        "refill": {"interval": "day", "amount": 50},
    }
    async with pool.acquire() as conn:
        assert await balance.refill_due(conn) == 0  # not again until tomorrow


@pytest.mark.parametrize("day", [1, 15, 28, 29, 30, 31])
async def test_python_and_postgresql_agree_on_the_schedule(pool: asyncpg.Pool, day: int) -> None:
    chooser = random.Random(day)
    refill = Refill("month", 10, day)
    daily = Refill("day", 10)
    start = datetime(2023, 1, 1, tzinfo=UTC)
    async with pool.acquire() as conn:
        for _ in range(60):
            now = start + timedelta(seconds=chooser.randrange(4 * 365 * 86400))
            for spec in (refill, daily):
                upcoming = spec.next_at(now)
                row = await conn.fetchrow(
                    "SELECT gateway_last_refill($1::jsonb, $2), gateway_last_refill($1::jsonb, $3),"
                    " gateway_last_refill($1::jsonb, $4)",
                    json.dumps(spec.as_json()),
                    now,
                    upcoming,
                    upcoming - timedelta(microseconds=1),
                )
                assert row is not None
                last_now, last_next, last_before = row
                assert last_now <= now < upcoming
                assert last_next == upcoming and last_before == last_now
