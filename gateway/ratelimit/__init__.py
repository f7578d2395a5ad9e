"""Rate limits (§13): GCRA per (limit, subject), a local backend and a Redis-shared one.
May import policy, observability and the foundation; edge calls it, never the reverse."""
