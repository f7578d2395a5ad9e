"""Forwarding to upstreams: targets, the lean HTTP/1.1 client, the streaming relay (to the
listener's own server or to aiohttp's), the WebSocket relay.
May import keys (the principal), policy, observability and the foundation; never edge or admin."""
