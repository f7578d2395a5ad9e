"""Request bodies as the reader frames them: by Content-Length, or chunked.

llhttp reads only heads here: it does not say where a chunked body ended inside
a read, so a request pipelined right behind one could not be told from the body.
These decoders take the reader's buffer and a position and say how far they
got, so the reader always knows where the next request starts.

Chunked framing is read strictly (RFC 9112 §7.1): a size of hex digits (at most
16), optional extensions without control characters, CRLF line ends (a bare LF
is refused: front proxies disagree on it, which is what desync attacks use),
CRLF after each chunk's data. Trailer fields are read, bounded and dropped: they
never become header fields of the forwarded request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


# Every value made per request or per read (`Head`, `Target`, `Match`, `Decision`,
# `Asked`, `Identity`, `Outcome`) is a dataclass for its repr and equality, with its own
# `__init__`: mypyc compiles that one, while the dataclass decorator's is generated at
# import and interpreted (1,000-5,000 instructions a call, a frozen one's most, as it
# sets each field through object.__setattr__).
@dataclass(slots=True, init=False)
class Data:
    """A piece of the request body."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


class End:
    """The request body (and so the request) is complete."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Failure:
    """What cannot be read as HTTP/1.1: answered with `status` (problem `slug`), then closed."""

    status: int
    slug: str
    detail: str


class Wait(Enum):
    NEED_DATA = "need-data"  # more bytes must arrive
    PAUSED = "paused"  # nothing is read until the reader is told to go on


END = End()
NEED_DATA = Wait.NEED_DATA
PAUSED = Wait.PAUSED
BodyEvent = Data | End | Failure | Wait

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# chunk-size [ chunk-ext ], chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS token / quoted ] )
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*%b(?:[ \t]*=[ \t]*(?:%b|%b))?)*"
    % (_TOKEN, _TOKEN, _QUOTED)
)
_TRAILER_LINE = re.compile(rb"%b:[^\x00-\x08\x0a-\x1f\x7f]*" % _TOKEN)
_MAX_SIZE_LINE = 1024


def _bad_chunk(detail: str) -> Failure:
    return Failure(400, "bad-chunk", detail)


def too_large() -> Failure:
    return Failure(413, "body-too-large", "the request body is too large")


class LengthBody:
    """A body of `Content-Length` bytes."""

    __slots__ = ("_left",)

    def __init__(self, length: int) -> None:
        self._left = length

    def read(self, data: bytes, pos: int) -> tuple[BodyEvent, int]:
        left = self._left
        if left == 0:
            return END, pos
        available = len(data) - pos
        if available == 0:
            return NEED_DATA, pos
        if pos == 0 and available <= left:
            self._left = left - available  # the whole read is body: no copy
            return Data(data), len(data)
        take = min(available, left)
        self._left = left - take
        return Data(data[pos : pos + take]), pos + take


class _Phase(Enum):
    SIZE = 1
    DATA = 2
    DATA_END = 3
    TRAILER = 4


class ChunkedBody:
    """A `Transfer-Encoding: chunked` body, at most `max_body` bytes of data."""

    __slots__ = ("_left", "_max_body", "_max_trailer", "_phase", "_seen", "_trailer")

    def __init__(self, max_body: int, max_trailer: int) -> None:
        self._phase = _Phase.SIZE
        self._left = 0  # data bytes of the current chunk still to come
        self._seen = 0
        self._max_body = max_body
        self._trailer = 0
        self._max_trailer = max_trailer

    def read(self, data: bytes, pos: int) -> tuple[BodyEvent, int]:
        while True:
            phase = self._phase
            if phase is _Phase.DATA:
                available = len(data) - pos
                if available == 0:
                    return NEED_DATA, pos
                take = min(available, self._left)
                self._left -= take
                if self._left == 0:
                    self._phase = _Phase.DATA_END
                return Data(data[pos : pos + take]), pos + take
            if phase is _Phase.DATA_END:
                ending = data[pos : pos + 2]
                if ending != b"\r\n"[: len(ending)]:
                    return _bad_chunk("a chunk's data is not followed by CRLF"), pos
                if len(ending) < 2:
                    return NEED_DATA, pos
                pos += 2
                self._phase = _Phase.SIZE
                continue
            line, pos = self._line(data, pos, _MAX_SIZE_LINE if phase is _Phase.SIZE else None)
            if isinstance(line, (Failure, Wait)):
                return line, pos
            if phase is _Phase.SIZE:
                failed = self._size(line)
                if failed is not None:
                    return failed, pos
            elif not line:
                return END, pos  # the empty line that ends the trailer section
            else:
                failed = self._trailer_field(line)
                if failed is not None:
                    return failed, pos

    def _line(self, data: bytes, pos: int, bound: int | None) -> tuple[bytes | Failure | Wait, int]:
        """The next CRLF-ended line (without it), or why there is none yet."""
        eol = data.find(b"\r\n", pos)
        stop = len(data) if eol < 0 else eol
        if data.find(b"\n", pos, stop) >= 0:
            return _bad_chunk("a bare LF in the chunked framing"), pos
        if eol < 0:
            if bound is not None and len(data) - pos > bound:
                return _bad_chunk("a chunk-size line is too long"), pos
            if bound is None and self._trailer + len(data) - pos > self._max_trailer:
                return Failure(431, "headers-too-large", "the trailer section is too large"), pos
            return NEED_DATA, pos
        return data[pos:eol], eol + 2

    def _size(self, line: bytes) -> Failure | None:
        match = _SIZE_LINE.fullmatch(line)
        if match is None:
            return _bad_chunk("a chunk size is not hexadecimal")
        size = int(match.group(1), 16)
        if size == 0:
            self._phase = _Phase.TRAILER
            return None
        self._seen += size
        if self._seen > self._max_body:
            return too_large()
        self._left = size
        self._phase = _Phase.DATA
        return None

    def _trailer_field(self, line: bytes) -> Failure | None:
        self._trailer += len(line) + 2
        if self._trailer > self._max_trailer:
            return Failure(431, "headers-too-large", "the trailer section is too large")
        if not _TRAILER_LINE.fullmatch(line):
            return _bad_chunk("a trailer field is malformed")
        return None  # read and dropped
