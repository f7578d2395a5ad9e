"""An API-key gateway: scoped API keys and actor JWTs in front of existing HTTP backends."""
