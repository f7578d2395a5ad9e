"""The access log: one JSON line per request on stdout, never a secret.

Lines are buffered and written in batches (every 50 ms by the app's telemetry
loop, or sooner when many are waiting): a write and a flush per request would
cost more than the proxying.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import msgspec

_encode = msgspec.json.Encoder().encode


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


FIELDS = (
    "time",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "user_id",
    "key_id",
    "upstream",
    "upstream_ms",
    "reason",
    "endpoint",  # proxy, or the decision endpoint asked (auth-request, forward-auth, ext-authz)
)


class AccessLog:
    """Collects one tuple of `FIELDS` per request; `flush()` encodes and writes them."""

    def __init__(self, stream: BinaryIO, *, max_pending: int = 512) -> None:
        self._stream = stream
        self._max_pending = max_pending
        self._pending: list[tuple[Any, ...]] = []

    def emit(self, values: tuple[Any, ...]) -> None:
        # Only an append here: encoding a batch at once, away from the request,
        # costs a fraction of encoding each line with the caches cold.
        self._pending.append(values)
        if len(self._pending) >= self._max_pending:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        lines = [_line(values) for values in batch]
        try:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout gone (closed pipe): serving matters more than logging


def _line(values: tuple[Any, ...]) -> bytes:
    record = dict(zip(FIELDS, values, strict=True))
    for key in ("duration_ms", "upstream_ms"):
        if record[key] is not None:
            record[key] = round(record[key], 3)
    try:
        return _encode(record)
    except UnicodeEncodeError:
        # A raw request line may carry undecodable bytes (kept as surrogates).
        return _encode({k: _printable(v) for k, v in record.items()})
