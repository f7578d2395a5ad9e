"""What every proxied request crosses: the listener (its own HTTP/1.1 server, aiohttp's
for handed-off connections), safety, CORS, authentication and the pipeline.
May import policy, keys, tokens, forward, observability and the top-level foundation modules."""
