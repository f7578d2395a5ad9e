"""Changing a key's balance from outside the request path: the admin API and CLI
(`POST /admin/v1/keys/{id}/credits`), and the scheduled refills.

A change touches the part of the balance no process holds (`credits_remaining`),
so a credit a process already holds is never given twice; what processes hold
counts towards the balance people see and towards a `set` or a refill, which
replace the whole balance. Each change is audited and announced (NOTIFY) in its
own transaction, so every process asks again at once rather than going on with an
"exhausted" it learnt before.
"""

from __future__ import annotations

import uuid
from typing import Any

from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.credits.refill import Refill, check_balance
from gateway.credits.shares import HELD
from gateway.foundation.database import INVALIDATION_CHANNEL as CHANNEL
from gateway.foundation.database import Conn

Errors = list[tuple[str, str]]
OPERATIONS = ("set", "increment", "decrement")

# The balance as people see it: the unheld part plus every share's unspent part.
BALANCE = f"credits_remaining + {HELD.format('id')}"

_REFILL = f"""
WITH due AS (
    SELECT id, gateway_last_refill(credits_refill, now()) AS at
      FROM api_keys
     WHERE credits_refill IS NOT NULL AND credits_remaining IS NOT NULL
       AND (revoked_at IS NULL OR revoked_at > now())
       AND coalesce(credits_refilled_at, '-infinity') < gateway_last_refill(credits_refill, now())
), refilled AS (
    UPDATE api_keys AS a
       SET credits_remaining = greatest(0, (a.credits_refill ->> 'amount')::bigint - {HELD.format("a.id")}),
           credits_refilled_at = due.at,
           credits_basis = (a.credits_refill ->> 'amount')::bigint, credits_alerted = 0
      FROM due
     WHERE a.id = due.id AND coalesce(a.credits_refilled_at, '-infinity') < due.at
    RETURNING a.id, a.user_id, a.name, a.credits_refill, due.at
), audited AS (
    INSERT INTO audit_events (actor, action, user_id, key_id, details)
    SELECT 'system', 'key.refilled', user_id, id,
           jsonb_build_object('name', name, 'refill', credits_refill, 'scheduled_at', at)
      FROM refilled
    RETURNING key_id
)
SELECT count(*) FROM audited, LATERAL (SELECT pg_notify($1, 'credits:' || key_id::text)) AS told
"""


async def refill_due(conn: Conn) -> int:
    """Refill every key whose scheduled time has come; how many. Run by every process:
    a key is refilled once per scheduled time however many run it at once (the
    second update of the row finds it already refilled)."""
    return int(await conn.fetchval(_REFILL, CHANNEL) or 0)


def check_change(body: object) -> Errors:
    """Exactly one of {"set": N | null}, {"increment": N}, {"decrement": N}."""
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in OPERATIONS:
        return [("body", 'must be one of {"set": N or null}, {"increment": N}, {"decrement": N}')]
    ((operation, value),) = body.items()
    if operation == "set" and value is None:
        return []
    return check_balance(value, operation)


class Unlimited(Exception):
    """An increment or decrement of a key without credits."""


class NoSuchKey(Exception):
    pass


async def change(
    conn: Conn, key_id: uuid.UUID, body: dict[str, Any], *, actor: Actor
) -> dict[str, Any] | None:
    """Apply a checked change to the key; its `credits` as the API shows them after
    (None: unlimited). Raises `NoSuchKey`, or `Unlimited` for an increment or
    decrement of a key without credits."""
    ((operation, value),) = body.items()
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT id, user_id, name, credits_remaining, credits_refill, key_hash"
            " FROM api_keys WHERE id = $1 FOR UPDATE",
            key_id,
        )
        if old is None:
            raise NoSuchKey(str(key_id))
        if operation != "set" and old["credits_remaining"] is None:
            raise Unlimited(key_id)
        if operation == "set" and value is None:
            await conn.execute("DELETE FROM credit_shares WHERE key_id = $1", old["id"])
        row = await conn.fetchrow(
            "UPDATE api_keys SET credits_remaining = CASE $2::text"
            # greatest() skips NULLs: `set null` (unlimited) needs its own case.
            " WHEN 'set' THEN CASE WHEN $3::bigint IS NULL THEN NULL"
            f" ELSE greatest(0, $3::bigint - {HELD.format('$1::uuid')}) END"
            " WHEN 'increment' THEN credits_remaining + $3"
            " ELSE greatest(0, credits_remaining - $3) END,"
            " credits_refilled_at = coalesce(credits_refilled_at, now()),"
            # A set starts a new period for the low-credit alerts; so does topping up
            # past its threshold.
            " credits_basis = CASE $2::text WHEN 'set' THEN $3::bigint ELSE credits_basis END,"
            " credits_alerted = CASE WHEN $2::text = 'set' THEN 0"
            " WHEN $2::text = 'increment' AND credits_remaining + $3 > coalesce(credits_basis, 0) / 10"
            " THEN 0 ELSE credits_alerted END"
            f" WHERE id = $1 RETURNING {BALANCE} AS balance, credits_refill",
            old["id"],
            operation,
            value,
        )
        assert row is not None
        credits = credits_json(row["balance"], row["credits_refill"])
        await audit.record(
            conn, actor, "key.credits", user_id=old["user_id"], key_id=str(old["id"]),
            details={"name": old["name"], operation: value, "credits": credits},
        )  # fmt: skip
        await announce(conn, str(old["id"]), bytes(old["key_hash"]))
    return credits


async def announce(conn: Conn, key_id: str, key_hash: bytes) -> None:
    """Every process reloads the key and asks about its credits again."""
    await conn.execute(
        "SELECT pg_notify($1, $2), pg_notify($1, $3)",
        CHANNEL,
        f"key:{key_id}:{key_hash.hex()}",
        f"credits:{key_id}",
    )


def credits_json(balance: int | None, refill: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A key's `credits` as the APIs show them; None: unlimited."""
    if balance is None:
        return None
    found = Refill.stored(refill)
    return {"remaining": int(balance), "refill": None if found is None else found.as_json()}
