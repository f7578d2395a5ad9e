"""The statements that move credits between a balance and the processes spending it:
a key's own (`KEYS`) or a user's pool that their keys share (`USERS`, §21).

Each is one atomic statement, safe to run from any number of processes and hosts
at once. A share's `amount` was taken from the key; its holder spends only what it
`claimed` (recorded here before it is spent), so whatever happens to the holder,
`amount - claimed` can go back to the key without a spent credit going back with
it. Credits go back to the key a share was taken for, or to the key that replaced
it by rotation (`rotated_to`), so a rotated key's balance follows it.

Both kinds of balance keep the same columns (`credits_remaining`, `credits_refill`, ...)
in their own table, with their shares in a table of their own: one text per statement,
with the table names filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    UPDATE {ACCOUNTS} AS a
       SET credits_remaining = a.credits_remaining
           - least(b.credits_remaining, greatest($3::bigint, least($4::bigint, ceil(b.credits_remaining / 8.0)::bigint)))
      FROM (SELECT id, credits_remaining FROM {ACCOUNTS} WHERE id = $1 FOR UPDATE) AS b
     WHERE a.id = b.id AND a.credits_remaining IS NOT NULL
    RETURNING b.credits_remaining - a.credits_remaining AS taken, a.credits_remaining AS unheld
), share AS (
    INSERT INTO {SHARES} AS s ({ACCOUNT}, holder, amount, claimed, spent, expires_at, silent_after)
    SELECT $1, $2, took.taken, least(took.taken, greatest($3::bigint, $7::bigint)),
           0, now() + make_interval(secs => $6), now() + make_interval(secs => $8)
      FROM took
    ON CONFLICT ({ACCOUNT}, holder) DO UPDATE
       SET amount = s.amount + EXCLUDED.amount,
           claimed = least(s.amount + EXCLUDED.amount, s.claimed + greatest($3::bigint, $7::bigint)),
           spent = $5, expires_at = EXCLUDED.expires_at, silent_after = EXCLUDED.silent_after
    RETURNING s.amount, s.claimed, (s.xmax = 0) AS fresh
)
SELECT took.taken, took.unheld, share.amount, share.claimed, share.fresh,
       (SELECT coalesce(sum({UNSPENT}), 0)::bigint FROM {SHARES} AS o
         WHERE o.{ACCOUNT} = $1 AND o.holder <> $2) AS others,
       (SELECT {MOVED}::text FROM {ACCOUNTS} WHERE id = $1) AS moved_to
  FROM took CROSS JOIN share
"""

# Claim `step` more of a share already held.
_CLAIM = """
UPDATE {SHARES}
   SET claimed = least(amount, claimed + $3::bigint),
       spent = $4, expires_at = now() + make_interval(secs => $5),
       silent_after = now() + make_interval(secs => $6)
 WHERE {ACCOUNT} = $1 AND holder = $2
RETURNING amount, claimed
"""

# A living holder's report: what it spent, and that it is still there.
_RENEW = """
UPDATE {SHARES} AS s
   SET spent = u.spent, expires_at = now() + make_interval(secs => $4),
       silent_after = now() + make_interval(secs => $5)
  FROM unnest($2::uuid[], $3::bigint[]) AS u(account, spent)
 WHERE s.holder = $1 AND s.{ACCOUNT} = u.account
RETURNING s.{ACCOUNT}::text
"""

# A holder giving shares back, exactly: it knows what it spent.
_GIVE_BACK = """
WITH mine AS (
    DELETE FROM {SHARES} AS s
     USING unnest($2::uuid[], $3::bigint[]) AS u(account, spent)
     WHERE s.holder = $1 AND s.{ACCOUNT} = u.account
    RETURNING s.{ACCOUNT} AS account, greatest(0, s.amount - u.spent) AS back
), owed AS (
    SELECT coalesce({K_MOVED}, k.id) AS account, sum(mine.back) AS back
      FROM mine JOIN {ACCOUNTS} AS k ON k.id = mine.account GROUP BY 1
)
UPDATE {ACCOUNTS} AS a SET credits_remaining = a.credits_remaining + owed.back
  FROM owed WHERE a.id = owed.account AND a.credits_remaining IS NOT NULL
"""

# Shares whose holder stopped renewing them (it died): what it never claimed goes back.
_SWEEP = """
WITH gone AS (
    DELETE FROM {SHARES} WHERE expires_at < now()
    RETURNING {ACCOUNT} AS account, amount - claimed AS back
), owed AS (
    SELECT coalesce({K_MOVED}, k.id) AS account, sum(gone.back) AS back, count(*) AS shares
      FROM gone JOIN {ACCOUNTS} AS k ON k.id = gone.account GROUP BY 1
), returned AS (
    UPDATE {ACCOUNTS} AS a SET credits_remaining = a.credits_remaining + owed.back
      FROM owed WHERE a.id = owed.account AND a.credits_remaining IS NOT NULL
)
SELECT coalesce(sum(shares), 0)::bigint FROM owed
"""

_HELD = "(SELECT coalesce(sum(" + _UNSPENT.format("") + "), 0) FROM {SHARES} WHERE {ACCOUNT} = {})"


@dataclass(frozen=True)
class Balances:
    """One kind of balance: its table, its shares' table, and the column naming the
    balance a share belongs to; `moved`: the column naming where a replaced one's
    credits went (a rotated key's successor), if the kind has one."""

    accounts: str
    shares: str
    account: str
    moved: str | None = None
    take_sql: str = field(init=False, repr=False)
    claim_sql: str = field(init=False, repr=False)
    renew_sql: str = field(init=False, repr=False)
    give_back_sql: str = field(init=False, repr=False)
    sweep_sql: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, text in (("take_sql", _TAKE), ("claim_sql", _CLAIM), ("renew_sql", _RENEW),
                           ("give_back_sql", _GIVE_BACK), ("sweep_sql", _SWEEP)):  # fmt: skip
            object.__setattr__(self, name, self._named(text))

    def held(self, account: str) -> str:
        """SQL for what the shares of the balance `account` (an SQL expression) hold."""
        return self._named(_HELD).format(account)

    def _named(self, text: str) -> str:
        names = {
            "{UNSPENT}": _UNSPENT.format("o."),
            "{ACCOUNTS}": self.accounts,
            "{SHARES}": self.shares,
            "{ACCOUNT}": self.account,
            "{MOVED}": self.moved or "NULL",
            "{K_MOVED}": f"k.{self.moved}" if self.moved else "NULL::uuid",
        }
        for placeholder, value in names.items():
            text = text.replace(placeholder, value)
        return text


KEYS = Balances("api_keys", "credit_shares", "key_id", moved="rotated_to")
USERS = Balances("user_credits", "user_credit_shares", "pool_id")
HELD = KEYS.held("{}")  # a key's: `HELD.format(key id)`


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
    kind: Balances,
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
    row = await conn.fetchrow(kind.take_sql, key_id, holder, need, cap, spent, lease, step, silence)
    if row is None:
        return None
    unheld = row["unheld"]
    return Taken(
        row["amount"], row["claimed"], row["fresh"], unheld + row["others"], unheld,
        row["taken"], row["moved_to"],
    )  # fmt: skip


async def claim(
    conn: Conn,
    kind: Balances,
    key_id: str,
    holder: str,
    step: int,
    spent: int,
    lease: float,
    silence: float,
) -> Taken | None:
    """Claim `step` more of the share; None when the share is gone (swept or reset)."""
    row = await conn.fetchrow(kind.claim_sql, key_id, holder, step, spent, lease, silence)
    return None if row is None else Taken(row["amount"], row["claimed"])


async def renew(
    conn: Conn, kind: Balances, holder: str, spent: dict[str, int], lease: float, silence: float
) -> set[str]:
    """Report spending and extend the lease; returns the keys whose share still exists."""
    rows = await conn.fetch(
        kind.renew_sql, holder, list(spent), list(spent.values()), lease, silence
    )
    return {row[0] for row in rows}


async def give_back(conn: Conn, kind: Balances, holder: str, spent: dict[str, int]) -> None:
    await conn.execute(kind.give_back_sql, holder, list(spent), list(spent.values()))


async def sweep(conn: Conn, kind: Balances) -> int:
    """Return expired shares to their balances; how many there were."""
    found = await conn.fetchval(kind.sweep_sql)
    return int(found or 0)
