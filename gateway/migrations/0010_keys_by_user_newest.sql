-- gateway: no-transaction
-- gateway: undo: DROP INDEX CONCURRENTLY IF EXISTS api_keys_user_newest
-- A user's keys, newest first (the page, the admin API, `keys list --user`), without a
-- sort. Built CONCURRENTLY: a fleet's api_keys stays writable while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS api_keys_user_newest ON api_keys (user_id, created_at DESC, id DESC)
