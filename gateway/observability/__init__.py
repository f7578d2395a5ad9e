"""Metrics, the access log and process logging set-up.
May import the foundation modules only (config, problems, database)."""
