"""The access log's line, field by field: a msgspec struct, in a module of its own
because the log that collects them is compiled with mypyc, whose classes cannot be
msgspec structs."""

from __future__ import annotations

import msgspec


class AccessLine(msgspec.Struct):
    """One access-log line, its fields in order (a struct: msgspec encodes a batch of
    them in one call, several times faster than a dict per line)."""

    time: float
    request_id: str
    method: str
    path: str
    route: str
    status: int
    duration_ms: float
    user_id: str | None
    key_id: str | None
    upstream: str | None
    upstream_ms: float | None
    reason: str | None
    endpoint: str  # proxy, or the decision endpoint asked (auth-request, forward-auth, ext-authz)
    client: str  # the client address (trusted_proxies applied; a decision's: as reported)
    trace_id: str | None  # when tracing is on (sampled or not: the id went upstream)


FIELDS: tuple[str, ...] = AccessLine.__struct_fields__
