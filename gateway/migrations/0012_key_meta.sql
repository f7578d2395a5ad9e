-- Metadata of a key (§21): a JSON object of at most 2 KiB, set by an admin, given to
-- upstreams in the identity JWT's `meta` claim and as X-Gateway-Key-Meta.
ALTER TABLE api_keys ADD COLUMN meta jsonb;
