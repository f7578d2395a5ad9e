-- The networks each key was used from (§21, the new-network notice): a client address's
-- /24 (IPv4) or /48 (IPv6), first and last seen; `noticed_in` is the transaction that
-- last announced it (key.new_network), so that exactly one host announces it.
CREATE TABLE key_networks (
    key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    network       cidr NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    noticed_in    bigint NOT NULL,
    PRIMARY KEY (key_id, network)
);

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.updated', 'key.rotated', 'key.revoked',
                      'key.disabled', 'key.enabled', 'key.credits', 'key.refilled',
                      'membership.added', 'membership.removed',
                      'webhook.created', 'webhook.deleted', 'webhook.secret_rotated',
                      'organization.key_policy_updated', 'key.new_network'));
