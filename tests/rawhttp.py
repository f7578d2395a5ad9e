"""A raw-socket HTTP/1.1 client for tests: send bytes exactly as given, read the
responses as a client would see them (split by llhttp), and whether the server closed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Replies:
    """Responses as a client sees them, split by llhttp (one connection's worth)."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.complete = 0
        self._parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.replies.append(Reply())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.replies[-1].headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.replies[-1].status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.replies[-1].body += body

    def on_message_complete(self) -> None:
        self.complete += 1

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


# How long to listen for a reply beyond the expected ones: a desync shows as an extra
# reply written right behind the expected one.
_SETTLE_SECONDS = 0.3


async def exchange(
    port: int, data: bytes, *, seconds: float = 3.0, expect: int | None = None
) -> tuple[list[Reply], bool]:
    """Send `data` at once; the replies, and whether the server closed the connection.

    Reads until the server closes or stays silent for `seconds`; once `expect` whole
    replies are in, for `_SETTLE_SECONDS` only."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = _Replies()
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                done = expect is not None and replies.complete >= expect
                wait = _SETTLE_SECONDS if done else seconds
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            replies.feed(chunk)
    finally:
        writer.close()
    if closed:
        replies.feed(b"")  # ends a body delimited by the connection's end
    return replies.replies, closed


def port_of(url: str) -> int:
    """The port of a listener's base URL (`http://127.0.0.1:PORT`)."""
    port = urlsplit(url).port
    assert port is not None
    return port
