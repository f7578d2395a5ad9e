"""Forwarding to upstreams: targets, the lean HTTP/1.1 client, the streaming relay (to the
gateway's own server), the WebSocket relay.
May import keys (the principal), policy, observability and the foundation; never edge or admin."""
