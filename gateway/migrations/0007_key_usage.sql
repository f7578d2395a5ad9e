-- Usage per key and UTC hour (contract §17). Every process adds its counts in one
-- statement per flush (ON CONFLICT ... + EXCLUDED), so counts from every process and
-- host add up exactly; rows older than usage.retention_days are deleted.
CREATE TABLE key_usage (
    key_id            uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    hour              timestamptz NOT NULL CHECK (date_trunc('hour', hour) = hour),
    allowed           bigint NOT NULL DEFAULT 0,
    rejected          bigint NOT NULL DEFAULT 0,  -- 401 on a known key: expired, revoked, disabled
    denied            bigint NOT NULL DEFAULT 0,  -- 403: scopes, membership, address
    rate_limited      bigint NOT NULL DEFAULT 0,
    credits_exhausted bigint NOT NULL DEFAULT 0,
    credits_spent     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour)
);
CREATE INDEX key_usage_hour ON key_usage (hour);
