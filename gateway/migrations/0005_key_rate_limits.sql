-- Per-key numbers for named `by: key` limits of the policy set:
-- {"per-key": {"limit": 1000, "per_seconds": 1, "burst": 2000}}.
ALTER TABLE api_keys
    ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(rate_limits) = 'object');
