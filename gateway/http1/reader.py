"""The sans-IO request reader: bytes in, events out; never touches a socket.

Theory of operation. A connection's bytes are given to `receive`; `next_event`
then says what they hold, one event at a time: a request `Head`, `Data` of its
body, its `End`, or a `Failure` (the bytes cannot be read as HTTP/1.1: answer
its status and close). When it needs more bytes it says `NEED_DATA`. Once a
whole request is read it says `PAUSED` until told where to go: `next_request()`
once the response to it is complete (a pipelined request waits in the buffer,
unread, so a malformed one cannot cut in before the answer to the one ahead of
it), or `switch()` when the request's protocol upgrade was accepted, which
hands over the bytes after the head, as received.

The whole state machine is this table; everything that moves it is in this file:

    state    | event or call              | next state
    ---------+----------------------------+-----------
    IDLE     | Head of a bodiless request | DONE
    IDLE     | Head with a body           | BODY
    BODY     | End                        | DONE
    DONE     | next_request()             | IDLE
    DONE     | switch()                   | SWITCHED
    any      | Failure                    | ERROR
    SWITCHED, ERROR: final; `next_event` says PAUSED for ever.

llhttp (httptools) parses each head, fed exactly the head's bytes; the reader
frames bodies itself (`framing`), so it knows where every request ends. Framing
that two parsers could read differently is a `Failure`: Content-Length with
Transfer-Encoding, two different lengths, any coding but `chunked`, a bare LF.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import httptools

from gateway.http1.framing import (
    END,
    NEED_DATA,
    PAUSED,
    ChunkedBody,
    Data,
    End,
    Failure,
    LengthBody,
    Wait,
)

__all__ = ["END", "NEED_DATA", "PAUSED", "Data", "End", "Failure", "Head", "RequestReader", "State"]


class State(Enum):
    IDLE = "idle"  # reading (the rest of) a request head
    BODY = "body"  # reading a request body
    DONE = "done"  # a whole request read; waiting for next_request() or switch()
    SWITCHED = "switched"  # the connection left HTTP/1.1
    ERROR = "error"  # the bytes are not HTTP/1.1


@dataclass(slots=True, init=False)  # one per request: see `framing.Data`
class Head:
    """A request line and its header fields, as received."""

    method: str
    target: str  # path and query, as received
    version: tuple[int, int]
    raw_headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    content_length: int | None
    chunked: bool
    upgrade: bool  # llhttp saw an upgrade (Connection: upgrade + Upgrade, or CONNECT)
    raw: bytes  # the head's bytes, for a hand-over after an accepted upgrade

    def __init__(
        self,
        method: str,
        target: str,
        version: tuple[int, int],
        raw_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
        raw: bytes,
    ) -> None:
        self.method, self.target, self.version = method, target, version
        self.raw_headers, self.keep_alive = raw_headers, keep_alive
        self.content_length, self.chunked = content_length, chunked
        self.upgrade, self.raw = upgrade, raw


Event = Head | Data | End | Failure | Wait
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
_VERSION_DIGITS = {b"1.1": (1, 1), b"1.0": (1, 0)}


def _parse_error() -> Failure:
    return Failure(400, "bad-request", "the request could not be parsed")


def _bad_framing(detail: str) -> Failure:
    return Failure(400, "bad-framing", detail)


class _HeadParser:
    """llhttp, given one whole head at a time; the callbacks collect it."""

    def __init__(self) -> None:
        self._parser: httptools.HttpRequestParser | None = None  # reusable for the next head
        self._parser_in_use: httptools.HttpRequestParser | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._keep_alive = True
        self._head_done = False
        self._message_done = False

    def parse(self, head: bytes) -> tuple[httptools.HttpRequestParser, bool] | Failure:
        """(the parser holding the head, whether llhttp flagged an upgrade)."""
        parser = self._parser or httptools.HttpRequestParser(self)
        self._parser_in_use = parser
        self._url, self._headers = b"", []
        self._head_done = self._message_done = False
        upgrade = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            upgrade = True
        except httptools.HttpParserError:
            self._parser = None
            return _parse_error()
        # A parser left inside a body or an upgrade cannot read the next head: the
        # reader frames the body itself, so the next head gets a fresh parser.
        self._parser = parser if self._message_done and not upgrade else None
        if not self._head_done:
            return _parse_error()
        return parser, upgrade

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: llhttp resets its flags once a message without a body completes.
        assert self._parser_in_use is not None
        self._keep_alive = self._parser_in_use.should_keep_alive()
        self._head_done = True

    def on_message_complete(self) -> None:
        self._message_done = True

    def head(
        self, parser: httptools.HttpRequestParser, raw: bytes, upgrade: bool
    ) -> Head | Failure:
        method_bytes, url = parser.get_method(), self._url
        version = _version(parser, raw, len(method_bytes) + len(url) + 2)
        if version is None:
            return Failure(400, "bad-protocol", "only HTTP/1.0 and HTTP/1.1 are served")
        framing = _framing(self._headers)
        if isinstance(framing, Failure):
            return framing
        length, chunked = framing
        method = method_bytes.decode("latin-1")
        return Head(
            method,
            url.decode("latin-1"),
            version,
            self._headers,
            self._keep_alive and method != "CONNECT",
            length,
            chunked,
            upgrade,
            raw if upgrade else b"",
        )


def _version(parser: httptools.HttpRequestParser, raw: bytes, at: int) -> tuple[int, int] | None:
    """The request's HTTP version, read off its request line at `at` (after the method,
    the target and a space each), where llhttp accepted `HTTP/d.d` followed by CRLF.
    llhttp's `get_http_version()` formats a string for it, and finding the line's end
    is a generic method call: some 2,300 instructions a request either way."""
    if raw[at : at + 5] == b"HTTP/" and raw[at + 8 : at + 10] == b"\r\n":
        return _VERSION_DIGITS.get(raw[at + 5 : at + 8])
    return _VERSIONS.get(parser.get_http_version())  # any line llhttp reads otherwise


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool] | Failure:
    """(Content-Length, chunked) of a request, or why it cannot be framed safely."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            lengths.append(value.strip())
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            codings.append(value)
    if codings:
        if lengths:
            return _bad_framing("both Content-Length and Transfer-Encoding")
        listed = [c.strip().lower() for value in codings for c in value.split(b",")]
        if listed[-1] != b"chunked":
            return _bad_framing("a request body must be chunked when it has a transfer coding")
        if len(listed) > 1:
            # The body could be framed, but the gateway would forward it decoded from
            # chunked and still compressed without saying so (RFC 9112 §6.1).
            return Failure(501, "unsupported-transfer-coding", "only chunked is supported")
        return None, True
    if not lengths:
        return None, False
    if len(set(lengths)) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        return _bad_framing("a Content-Length that cannot be trusted")
    return int(lengths[0]), False


class RequestReader:
    """Reads the requests of one connection; see the module's theory of operation."""

    def __init__(self, *, max_header_bytes: int, max_body_bytes: int) -> None:
        self.state = State.IDLE
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._data = b""  # received and not yet read: self._data[self._pos:]
        self._pos = 0
        self._heads = _HeadParser()
        self._body: LengthBody | ChunkedBody | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return len(self._data) - self._pos

    def receive(self, data: bytes) -> None:
        if self._pos >= len(self._data):
            self._data, self._pos = data, 0  # the common case: no copy
        else:
            self._data, self._pos = self._data[self._pos :] + data, 0

    def next_event(self) -> Event:
        state = self.state
        if state is State.BODY:
            assert self._body is not None
            event, self._pos = self._body.read(self._data, self._pos)
            if event is END:
                self.state = State.DONE
            elif isinstance(event, Failure):
                self.state = State.ERROR
            return event
        if state is State.IDLE:
            return self._read_head()
        return PAUSED

    def next_request(self) -> None:
        """The response to the request just read is complete: read the next one."""
        if self.state is not State.DONE:
            raise RuntimeError(f"next_request() in state {self.state.value}")
        self.state = State.IDLE
        self._body = None

    def switch(self) -> bytes:
        """The request's upgrade was accepted: the bytes after its head, as received."""
        if self.state is not State.DONE:
            raise RuntimeError(f"switch() in state {self.state.value}")
        self.state = State.SWITCHED
        rest, self._data, self._pos = self._data[self._pos :], b"", 0
        return rest

    def _read_head(self) -> Event:
        data, pos = self._data, self._pos
        while data.startswith(b"\r\n", pos):
            pos += 2  # empty lines before a request line (RFC 9112 §2.2)
        self._pos = pos
        end = data.find(b"\r\n\r\n", pos)
        bare = data.find(b"\n\n", pos, None if end < 0 else end)
        if bare >= 0:
            return self._fail(Failure(400, "bad-request", "a bare LF ends a header line"))
        if end < 0:
            if len(data) - pos > self._max_header + 4:
                return self._fail(_too_large())
            return NEED_DATA
        end += 4
        if end - pos > self._max_header + 4:
            return self._fail(_too_large())
        raw = data if pos == 0 and end == len(data) else data[pos:end]
        self._pos = end
        parsed = self._heads.parse(raw)
        if isinstance(parsed, Failure):
            return self._fail(parsed)
        head = self._heads.head(parsed[0], raw, parsed[1])
        if isinstance(head, Failure):
            return self._fail(head)
        if head.chunked:
            self._body = ChunkedBody(self._max_body, self._max_header)
            self.state = State.BODY
        elif head.content_length:
            self._body = LengthBody(head.content_length)
            self.state = State.BODY
        else:
            self.state = State.DONE
        return head

    def _fail(self, failure: Failure) -> Failure:
        self.state = State.ERROR
        return failure


def _too_large() -> Failure:
    return Failure(431, "headers-too-large", "the request headers are too large")
