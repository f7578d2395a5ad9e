"""What every request on the proxy and decision ports crosses: the gateway's HTTP/1.1
server (`inbound`), the envelope, safety, CORS, the client address, authentication,
the `Decider`, the proxy pipeline, and the WebSocket hand-over to aiohttp (`upgrade`).
May import policy, keys, tokens, forward, selfservice, ratelimit, audit, observability,
http1 and the top-level foundation modules."""
