-- Webhooks (contract §17): endpoints, an outbox of events written in the same
-- transaction as the change that causes them, and one delivery per event and endpoint.
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    url             text NOT NULL CHECK (url ~ '^https?://'),
    events          text[] NOT NULL,
    description     text,
    secret          text NOT NULL,          -- signs deliveries (whsec_...); never logged
    previous_secret text,                   -- still signs beside the new one after a rotation
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_events (
    id         text PRIMARY KEY,            -- webhook-id: the same on every attempt
    type       text NOT NULL,
    payload    text NOT NULL,               -- the body, exactly as signed and sent
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id        text NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- When it is due; while an attempt is under way, when it may be tried again by
    -- another host (the attempting one died).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);

-- Time-driven events, each sent once: the smallest "expires in N days" threshold
-- already announced (30, 7, 1; 0: expired), and the credit alerts of this period
-- (1: low, 2: exhausted) against the last set or refill amount.
ALTER TABLE api_keys
    ADD COLUMN expiry_notified smallint,
    ADD COLUMN credits_basis bigint,
    ADD COLUMN credits_alerted smallint NOT NULL DEFAULT 0;
UPDATE api_keys SET credits_basis = credits_remaining WHERE credits_remaining IS NOT NULL;

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.updated', 'key.rotated', 'key.revoked',
                      'key.disabled', 'key.enabled', 'key.credits', 'key.refilled',
                      'membership.added', 'membership.removed',
                      'webhook.created', 'webhook.deleted', 'webhook.secret_rotated'));
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_check
    CHECK (actor IN ('admin', 'cli', 'system', 'leak:github') OR actor LIKE 'user:%');
