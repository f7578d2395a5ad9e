"""What every proxied request crosses: listener, safety, CORS, authentication and the pipeline.
May import policy, keys, tokens, forward, observability and the top-level foundation modules."""
