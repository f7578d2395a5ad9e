"""The API keys page and its API: a signed-in person creates, sees once, lists, rotates and
deletes their own keys. May import keys, policy, observability and the foundation; never edge."""
