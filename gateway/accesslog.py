"""The access log: one JSON line per request on stdout, never a secret.

Lines are buffered and written in batches (every 50 ms, or sooner when many are
waiting): a write and a flush per request would cost more than the proxying.
"""

from __future__ import annotations

import asyncio
from typing import Any, BinaryIO

import msgspec

_encode = msgspec.json.Encoder().encode


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class AccessLog:
    def __init__(self, stream: BinaryIO, *, interval: float = 0.05, max_pending: int = 512) -> None:
        self._stream = stream
        self._interval = interval
        self._max_pending = max_pending
        self._pending: list[bytes] = []

    def emit(self, record: dict[str, Any]) -> None:
        try:
            line = _encode(record)
        except UnicodeEncodeError:
            # A raw request line may carry undecodable bytes (kept as surrogates).
            line = _encode({k: _printable(v) for k, v in record.items()})
        self._pending.append(line)
        if len(self._pending) >= self._max_pending:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout gone (closed pipe): serving matters more than logging

    async def run(self) -> None:
        """Flush periodically until cancelled; flush what is left on the way out."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                self.flush()
        finally:
            self.flush()
