"""Forwarding to upstreams: targets, the streaming HTTP relay, the WebSocket relay.
May import keys (the principal), policy, observability and the foundation; never edge or admin."""
