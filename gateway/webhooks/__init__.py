"""Webhooks (§17): endpoints, delivery of the outbox's events from any host, and the
scan for time-driven events. May import audit and the foundation; admin and the CLI
manage endpoints, the runtime runs delivery."""
