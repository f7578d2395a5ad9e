-- API keys: only the SHA-256 of a key is stored; the plaintext never is.
CREATE TABLE api_keys (
    id             uuid PRIMARY KEY,
    key_hash       bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    display_prefix text NOT NULL,
    user_id        text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes         text[] NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    -- May lie in the future: a rotated key keeps working until its grace ends.
    revoked_at     timestamptz,
    last_used_at   timestamptz,
    rotated_to     uuid REFERENCES api_keys (id)
);

CREATE INDEX api_keys_user_id ON api_keys (user_id, created_at);

CREATE TABLE memberships (
    user_id       text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    resource_type text NOT NULL CHECK (resource_type IN ('organization', 'project')),
    resource_id   text NOT NULL CHECK (length(resource_id) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, resource_type, resource_id)
);
