-- Credits (contract §16): a balance per key, spent by requests, refilled on a schedule.
--
-- `credits_remaining` is the part of the balance no process holds; a process takes a
-- share of it into `credit_shares` in one atomic statement and spends that share in
-- memory. The balance a person sees is the unheld part plus every share's unspent
-- part. NULL: unlimited.
ALTER TABLE api_keys
    ADD COLUMN credits_remaining bigint CHECK (credits_remaining >= 0),
    -- {"interval": "day" | "month", "amount": A, "day": 1-31 (month only)}
    ADD COLUMN credits_refill jsonb CHECK (credits_refill IS NULL OR jsonb_typeof(credits_refill) = 'object'),
    ADD COLUMN credits_refilled_at timestamptz;

-- A process's share of one key's balance. `amount` was taken from the key; the process
-- may spend only what it `claimed`, and it claims in small steps, each recorded here
-- before it is spent. So a share whose holder died (the lease ran out) gives back
-- `amount - claimed` without ever giving back a credit that was spent; a holder that
-- stops cleanly gives back `amount - spent`, exactly.
CREATE TABLE credit_shares (
    key_id     uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    holder     text NOT NULL,
    amount     bigint NOT NULL CHECK (amount >= 0),
    claimed    bigint NOT NULL DEFAULT 0 CHECK (claimed >= 0 AND claimed <= amount),
    spent      bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),  -- as last reported, for listings
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key_id, holder)
);
CREATE INDEX credit_shares_expiry ON credit_shares (expires_at);

-- The last scheduled refill time at or before `at` (UTC): 00:00 every day, or 00:00 on
-- `day` of every month (the last day of a shorter month).
CREATE FUNCTION gateway_last_refill(refill jsonb, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
    WITH t AS (SELECT (at AT TIME ZONE 'UTC') AS now_utc),
    months AS (
        SELECT date_trunc('month', now_utc) AS this_month,
               date_trunc('month', now_utc) - interval '1 month' AS last_month,
               now_utc
        FROM t
    ),
    due AS (
        SELECT now_utc,
               this_month + (least((refill ->> 'day')::int,
                   extract(day FROM this_month + interval '1 month - 1 day')::int) - 1)
                   * interval '1 day' AS this_due,
               last_month + (least((refill ->> 'day')::int,
                   extract(day FROM last_month + interval '1 month - 1 day')::int) - 1)
                   * interval '1 day' AS last_due
        FROM months
    )
    SELECT (CASE
        WHEN refill ->> 'interval' = 'day' THEN date_trunc('day', now_utc)
        WHEN this_due <= now_utc THEN this_due
        ELSE last_due
    END) AT TIME ZONE 'UTC'
    FROM due
$$;

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.updated', 'key.rotated', 'key.revoked',
                      'key.disabled', 'key.enabled', 'key.credits', 'key.refilled',
                      'membership.added', 'membership.removed'));
-- Refills are made by the gateway itself, not by a person or the CLI.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_check
    CHECK (actor IN ('admin', 'cli', 'system') OR actor LIKE 'user:%');
