-- Key controls: a key can be switched off and on (unlike revocation), and pinned to
-- client networks. Both travel to every process by the same NOTIFY as revocation.
ALTER TABLE api_keys
    ADD COLUMN enabled boolean NOT NULL DEFAULT true,
    ADD COLUMN allowed_cidrs cidr[] NOT NULL DEFAULT '{}';

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.updated', 'key.rotated', 'key.revoked',
                      'key.disabled', 'key.enabled', 'membership.added', 'membership.removed'));
