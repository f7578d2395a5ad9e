"""The API keys page and its API: a signed-in person creates, sees once, lists, rotates and
deletes their own keys, and sees their credit pool. May import keys, credits, policy,
observability and the foundation; never edge."""
