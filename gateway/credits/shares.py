"""The statements that move credits between a key and the processes spending them.

Each is one atomic statement, safe to run from any number of processes and hosts
at once. A share's `amount` was taken from the key; its holder spends only what it
`claimed` (recorded here before it is spent), so whatever happens to the holder,
`amount - claimed` can go back to the key without a spent credit going back with
it. Credits go back to the key a share was taken for, or to the key that replaced
it by rotation (`rotated_to`), so a rotated key's balance follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.foundation.database import Conn

# What a share holds for the balance: what a holder heard from lately has not spent
# (as last reported); of a silent holder's share (probably gone), only what it never
# claimed, which is what comes back when its lease runs out.
_UNSPENT = (
    "CASE WHEN {0}silent_after > now() THEN {0}amount - least({0}amount, {0}spent)"
    " ELSE {0}amount - {0}claimed END"
)
# Take up to an eighth of what the key has left (at least `need`, at most `cap`) into
# this holder's share, and claim `need` or the holder's claim step, whichever is more
# (the holder sizes its steps to its spending). The self-join reads the balance as it
# was under the row lock, so concurrent takes never take the same credit twice. A key
# replaced by a rotation has nothing left: `moved_to` says where its balance went.
_TAKE = """
WITH took AS (
    UPDATE api_keys AS a
       SET credits_remaining = a.credits_remaining
           - least(b.credits_remaining, greatest($3::bigint, least($4::bigint, ceil(b.credits_remaining / 8.0)::bigint)))
      FROM (SELECT id, credits_remaining FROM api_keys WHERE id = $1 FOR UPDATE) AS b
     WHERE a.id = b.id AND a.credits_remaining IS NOT NULL
    RETURNING b.credits_remaining - a.credits_remaining AS taken, a.credits_remaining AS unheld
), share AS (
    INSERT INTO credit_shares AS s (key_id, holder, amount, claimed, spent, expires_at, silent_after)
    SELECT $1, $2, took.taken, least(took.taken, greatest($3::bigint, $7::bigint)),
           0, now() + make_interval(secs => $6), now() + make_interval(secs => $8)
      FROM took
    ON CONFLICT (key_id, holder) DO UPDATE
       SET amount = s.amount + EXCLUDED.amount,
           claimed = least(s.amount + EXCLUDED.amount, s.claimed + greatest($3::bigint, $7::bigint)),
           spent = $5, expires_at = EXCLUDED.expires_at, silent_after = EXCLUDED.silent_after
    RETURNING s.amount, s.claimed, (s.xmax = 0) AS fresh
)
SELECT took.taken, took.unheld, share.amount, share.claimed, share.fresh,
       (SELECT coalesce(sum({UNSPENT}), 0)::bigint FROM credit_shares AS o
         WHERE o.key_id = $1 AND o.holder <> $2) AS others,
       (SELECT rotated_to::text FROM api_keys WHERE id = $1) AS moved_to
  FROM took CROSS JOIN share
""".replace("{UNSPENT}", _UNSPENT.format("o."))

# Claim `step` more of a share already held.
_CLAIM = """
UPDATE credit_shares
   SET claimed = least(amount, claimed + $3::bigint),
       spent = $4, expires_at = now() + make_interval(secs => $5),
       silent_after = now() + make_interval(secs => $6)
 WHERE key_id = $1 AND holder = $2
RETURNING amount, claimed
"""

# A living holder's report: what it spent, and that it is still there.
_RENEW = """
UPDATE credit_shares AS s
   SET spent = u.spent, expires_at = now() + make_interval(secs => $4),
       silent_after = now() + make_interval(secs => $5)
  FROM unnest($2::uuid[], $3::bigint[]) AS u(key_id, spent)
 WHERE s.holder = $1 AND s.key_id = u.key_id
RETURNING s.key_id::text
"""

# A holder giving shares back, exactly: it knows what it spent.
_GIVE_BACK = """
WITH mine AS (
    DELETE FROM credit_shares AS s
     USING unnest($2::uuid[], $3::bigint[]) AS u(key_id, spent)
     WHERE s.holder = $1 AND s.key_id = u.key_id
    RETURNING s.key_id, greatest(0, s.amount - u.spent) AS back
), owed AS (
    SELECT coalesce(k.rotated_to, k.id) AS account, sum(mine.back) AS back
      FROM mine JOIN api_keys AS k ON k.id = mine.key_id GROUP BY 1
)
UPDATE api_keys AS a SET credits_remaining = a.credits_remaining + owed.back
  FROM owed WHERE a.id = owed.account AND a.credits_remaining IS NOT NULL
"""

# Shares whose holder stopped renewing them (it died): what it never claimed goes back.
_SWEEP = """
WITH gone AS (
    DELETE FROM credit_shares WHERE expires_at < now()
    RETURNING key_id, amount - claimed AS back
), owed AS (
    SELECT coalesce(k.rotated_to, k.id) AS account, sum(gone.back) AS back, count(*) AS shares
      FROM gone JOIN api_keys AS k ON k.id = gone.key_id GROUP BY 1
), returned AS (
    UPDATE api_keys AS a SET credits_remaining = a.credits_remaining + owed.back
      FROM owed WHERE a.id = owed.account AND a.credits_remaining IS NOT NULL
)
SELECT coalesce(sum(shares), 0)::bigint FROM owed
"""

HELD = "(SELECT coalesce(sum(" + _UNSPENT.format("") + "), 0) FROM credit_shares WHERE key_id = {})"


@dataclass(frozen=True, slots=True)
class Taken:
    """A share as PostgreSQL has it after a take or claim; `fresh` when a new row
    (the old one was swept); `others` is the rest of the balance: unheld plus what
    other holders have not spent."""

    amount: int
    claimed: int
    fresh: bool = False
    others: int | None = None  # a take tells; a claim does not
    unheld: int | None = None  # what no process holds after a take
    taken: int = 0  # how much a take took
    moved_to: str | None = None  # the key's balance went to this key (a rotation)


async def take(
    conn: Conn,
    key_id: str,
    holder: str,
    need: int,
    cap: int,
    spent: int,
    lease: float,
    step: int,
    silence: float,
) -> Taken | None:
    """Take credits into this holder's share and claim `step` (or `need`); None when
    the key is unlimited (or gone). `silence`: how long until the share counts as its
    holder's last word, unless it reports again."""
    row = await conn.fetchrow(_TAKE, key_id, holder, need, cap, spent, lease, step, silence)
    if row is None:
        return None
    unheld = row["unheld"]
    return Taken(
        row["amount"], row["claimed"], row["fresh"], unheld + row["others"], unheld,
        row["taken"], row["moved_to"],
    )  # fmt: skip


async def claim(
    conn: Conn, key_id: str, holder: str, step: int, spent: int, lease: float, silence: float
) -> Taken | None:
    """Claim `step` more of the share; None when the share is gone (swept or reset)."""
    row = await conn.fetchrow(_CLAIM, key_id, holder, step, spent, lease, silence)
    return None if row is None else Taken(row["amount"], row["claimed"])


async def renew(
    conn: Conn, holder: str, spent: dict[str, int], lease: float, silence: float
) -> set[str]:
    """Report spending and extend the lease; returns the keys whose share still exists."""
    rows = await conn.fetch(_RENEW, holder, list(spent), list(spent.values()), lease, silence)
    return {row[0] for row in rows}


async def give_back(conn: Conn, holder: str, spent: dict[str, int]) -> None:
    await conn.execute(_GIVE_BACK, holder, list(spent), list(spent.values()))


async def sweep(conn: Conn) -> int:
    """Return expired shares to their keys; how many there were."""
    found = await conn.fetchval(_SWEEP)
    return int(found or 0)
