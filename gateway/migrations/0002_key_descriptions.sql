-- A free-text note beside the name, set on the API keys page, the admin API or the CLI.
ALTER TABLE api_keys
    ADD COLUMN description text CHECK (length(description) <= 500);
