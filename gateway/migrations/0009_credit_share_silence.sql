-- Credits (contract §16, §18): when a share's holder was last heard from.
--
-- A holder reports every `credits.sync_interval_seconds`; each take, claim and report
-- moves `silent_after` a few intervals ahead. A share past it belongs to a process
-- that is probably gone: the balance people see counts only what will come back of
-- it (`amount - claimed`), not credits that no request can spend any more, and a
-- refill that replaces the balance does not count the rest as held.
ALTER TABLE credit_shares ADD COLUMN silent_after timestamptz NOT NULL DEFAULT now();
