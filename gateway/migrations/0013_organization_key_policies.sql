-- Each organization's key policy (§21): the longest lifetime a key may have to be used
-- on routes whose `member_of` names the organization.
CREATE TABLE organization_key_policies (
    organization text PRIMARY KEY,
    max_lifetime_days integer NOT NULL CHECK (max_lifetime_days BETWEEN 1 AND 36500),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check
    CHECK (action IN ('key.created', 'key.updated', 'key.rotated', 'key.revoked',
                      'key.disabled', 'key.enabled', 'key.credits', 'key.refilled',
                      'membership.added', 'membership.removed',
                      'webhook.created', 'webhook.deleted', 'webhook.secret_rotated',
                      'organization.key_policy_updated'));
