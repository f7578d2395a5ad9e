"""Time-driven webhook events (§17), found by a scan that one process runs at a time
across every host (a transaction-scoped advisory lock; the others skip that round),
each event once (the key remembers what was announced):

- `key.expiring` 30, 7 and 1 days before `expires_at` (the nearest threshold only, for
  a key made closer to its end than 30 days), `key.expired` once it has;
- `key.credits_low` once the balance is at most 10 % of the last set or refill amount,
  `key.credits_exhausted` once it is 0 — once per period: a set or refill starts anew;
  `user.credits_low` and `user.credits_exhausted` likewise for a user's pool (§21).
"""

from __future__ import annotations

from gateway.audit.outbox import enqueue
from gateway.credits.shares import HELD, USERS
from gateway.foundation.database import Conn

SCAN_LOCK = 0x7765_6268_6F6F_6B  # any constant: the same in every process
THRESHOLDS = (30, 7, 1)

_EXPIRING = """
UPDATE api_keys SET expiry_notified = $1
 WHERE expires_at > now() AND expires_at <= now() + make_interval(days => $1)
   AND (revoked_at IS NULL OR revoked_at > now())
   AND (expiry_notified IS NULL OR expiry_notified > $1)
RETURNING id::text, expires_at
"""
_EXPIRED = """
UPDATE api_keys SET expiry_notified = 0
 WHERE expires_at <= now() AND expires_at > now() - interval '7 days'
   AND (revoked_at IS NULL OR revoked_at > expires_at)
   AND expiry_notified IS DISTINCT FROM 0
RETURNING id::text, expires_at
"""
_CREDITS = f"""
UPDATE api_keys AS k SET credits_alerted = $1
 WHERE credits_remaining IS NOT NULL AND credits_basis > 0 AND credits_alerted < $1
   AND (revoked_at IS NULL OR revoked_at > now())
   AND credits_remaining + {HELD.format("k.id")} <= CASE WHEN $1 = 2 THEN 0 ELSE credits_basis / 10 END
RETURNING id::text, (credits_remaining + {HELD.format("k.id")})::bigint AS remaining, credits_basis
"""

_POOL_CREDITS = f"""
UPDATE user_credits AS p SET credits_alerted = $1
 WHERE credits_basis > 0 AND credits_alerted < $1
   AND credits_remaining + {USERS.held("p.id")} <= CASE WHEN $1 = 2 THEN 0 ELSE credits_basis / 10 END
RETURNING user_id, (credits_remaining + {USERS.held("p.id")})::bigint AS remaining, credits_basis
"""
_CREDIT_EVENTS = ((2, "credits_exhausted"), (1, "credits_low"))


async def scan(conn: Conn) -> int:
    """One round, if no other process is running one; how many events it made."""
    made = 0
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SCAN_LOCK):
            return 0
        for days in sorted(THRESHOLDS):  # nearest first: a key gets only its nearest
            for row in await conn.fetch(_EXPIRING, days):
                data = {"days_left": days, "actor": "system"}
                made += await _event(conn, "key.expiring", row["id"], data)
        for row in await conn.fetch(_EXPIRED):
            made += await _event(conn, "key.expired", row["id"], {"actor": "system"})
        for level, event in _CREDIT_EVENTS:
            for row in await conn.fetch(_CREDITS, level):
                data = {"remaining": row["remaining"], "basis": row["credits_basis"],
                        "actor": "system"}  # fmt: skip
                made += await _event(conn, f"key.{event}", row["id"], data)
            for row in await conn.fetch(_POOL_CREDITS, level):
                data = {"user_id": row["user_id"], "remaining": row["remaining"],
                        "basis": row["credits_basis"], "actor": "system"}  # fmt: skip
                await enqueue(conn, f"user.{event}", data, None)
                made += 1
    return made


async def _event(conn: Conn, event_type: str, key_id: str, data: dict[str, object]) -> int:
    await enqueue(conn, event_type, {"key_id": key_id, **data}, key_id)
    return 1
