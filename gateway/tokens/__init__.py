"""Signed tokens: signing keys, actor tokens (mint, verify), the token endpoint and JWKS.
May import keys, policy, observability and the foundation; never edge, forward or admin."""
