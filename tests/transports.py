"""A transport for byte-script tests of protocols (the server and upstream connections,
the WebSocket relay): it keeps what is written and whether it was closed or paused,
and talks to no socket."""

from __future__ import annotations

import asyncio
import re
from typing import Any


class Recorded(asyncio.Transport):
    """A transport that keeps what is written and whether it was closed or paused."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.aborted = self.paused = self.eof = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("203.0.113.7", 50000) if name == "peername" else default

    def responses(self) -> list[bytes]:
        """The status lines written, in order."""
        return re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+(?=\r\n)", self.written)
