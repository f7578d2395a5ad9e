"""API keys: format, the cached store, cross-process invalidation, management, the principal.
May import policy (the scope catalogue), observability and the foundation; never edge, admin or forward."""
