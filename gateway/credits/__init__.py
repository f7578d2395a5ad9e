"""Credits (§16): a key's balance, refilled on a schedule, spent by requests without a
database round trip each. May import audit and the foundation; keys and edge call it."""
