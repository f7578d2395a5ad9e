-- Credits of a user (§21): one balance that every key of the user without credits of
-- its own spends. The same bookkeeping as a key's balance (0006, 0009): `credits_remaining`
-- is the part no process holds; processes spend shares of it (`user_credit_shares`).
-- `id` names the pool to the processes spending it, as a key's id names its balance.
CREATE TABLE user_credits (
    user_id             text PRIMARY KEY,
    id                  uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    credits_remaining   bigint NOT NULL CHECK (credits_remaining >= 0),
    credits_refill      jsonb CHECK (credits_refill IS NULL OR jsonb_typeof(credits_refill) = 'object'),
    credits_refilled_at timestamptz,
    credits_basis       bigint,
    credits_alerted     smallint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_credit_shares (
    pool_id      uuid NOT NULL REFERENCES user_credits (id) ON DELETE CASCADE,
    holder       text NOT NULL,
    amount       bigint NOT NULL CHECK (amount >= 0),
    claimed      bigint NOT NULL DEFAULT 0 CHECK (claimed >= 0 AND claimed <= amount),
    spent        bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    expires_at   timestamptz NOT NULL,
    silent_after timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, holder)
);
CREATE INDEX user_credit_shares_expiry ON user_credit_shares (expires_at);

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.updated', 'key.rotated', 'key.revoked',
                      'key.disabled', 'key.enabled', 'key.credits', 'key.refilled',
                      'membership.added', 'membership.removed',
                      'webhook.created', 'webhook.deleted', 'webhook.secret_rotated',
                      'organization.key_policy_updated', 'key.new_network',
                      'user.credits', 'user.refilled'));
