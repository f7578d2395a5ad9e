"""Bytes on the wire that both sides write: header lines, hop-by-hop rules, chunks, `Date`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Connection-level headers (RFC 9110 §7.6.1): never passed on by a proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
LAST_CHUNK = b"0\r\n\r\n"


def encode_headers(headers: dict[str, str]) -> bytes:
    """Header lines, each ending in CRLF. Values as UTF-8; a value echoed from the
    request (a CORS origin) goes back as the bytes it came as."""
    # A dict, not a Mapping, and one f-string a line: compiled, iterating a Mapping
    # and concatenating cost about 1,100 instructions a header.
    return "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode(
        "utf-8", "surrogateescape"
    )


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@functools.lru_cache(maxsize=64)
def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class Memo(Generic[K, V]):
    """What `functools.lru_cache` does for the helpers called for every header of every
    message, at a quarter of its cost from compiled code: a native method call and one
    dict lookup, in place of the cache wrapper's generic call (about 860 instructions).
    The same few keys recur; past `size` of them (they come from the network) results
    are computed and not kept."""

    def __init__(self, compute: Callable[[K], V], size: int) -> None:
        self._compute = compute
        self._size = size
        self._known: dict[K, V] = {}

    def get(self, key: K) -> V:
        try:
            return self._known[key]
        except KeyError:
            pass
        value = self._compute(key)
        if len(self._known) < self._size:
            self._known[key] = value
        return value


def _fold(name: bytes) -> str:
    return name.lower().replace(b"_", b"-").decode("latin-1")


def _names(value: bytes) -> frozenset[str]:
    # Hop-by-hop names are dropped whatever a `Connection` says: leaving them out keeps
    # the usual lists ("keep-alive", "close") empty, and a message with an empty one
    # is not checked header by header.
    return (
        frozenset(
            token.strip().lower().replace("_", "-")
            for token in value.decode("latin-1").split(",")
            if token.strip()
        )
        - HOP_BY_HOP
    )


class HeaderNames:
    """Header names as the gateway compares them, and `Connection` lists as it reads
    them, remembered: the same few recur on every message. One per gateway, made by
    the composition root and handed to what reads headers, so that no module keeps
    state of its own."""

    def __init__(self) -> None:
        self._folded: Memo[bytes, str] = Memo(_fold, 4096)  # by spelling
        # By value: the same one ("keep-alive", "close") arrives on nearly every message.
        self._listed: Memo[bytes, frozenset[str]] = Memo(_names, 256)

    def folded(self, name: bytes) -> str:
        """A header name compared as CGI/WSGI backends read it: lower case, "_" as "-"
        (X_Gateway_User_Id would become the identity header on their side)."""
        return self._folded.get(name)

    def listed(self, value: bytes) -> frozenset[str]:
        """The header names a `Connection` header's value names (hop-by-hop by name),
        but for the ones hop-by-hop anyway (`HOP_BY_HOP`)."""
        return self._listed.get(value)


class HttpDate:
    """The `Date` header's value, formatted once per second (one per listener)."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value
