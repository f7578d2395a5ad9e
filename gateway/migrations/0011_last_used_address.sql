-- Keys (contract §21): the client address of a key's last use, beside its time.
--
-- Written with `last_used_at`, in the same batched statement (no write per request);
-- the address is the client address after `trusted_proxies`, as the access log has it.
ALTER TABLE api_keys ADD COLUMN last_used_address inet;
