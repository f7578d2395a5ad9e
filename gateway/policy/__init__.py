"""Route policies: scopes, path canonicalisation, the loader, routing, reloads, authz, explain.
May import observability and the foundation only; never keys, edge, admin or forward."""
