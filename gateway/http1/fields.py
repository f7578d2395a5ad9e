"""A request's header fields by name, for the lookups the gateway makes on every request.

The credential, the request id, `Host`, `Connection`, `Expect`, `Upgrade` and a
decision's description of the original request are found by scanning the fields as
received, in compiled code: a name is compared only when its length matches, and a
value is decoded only when it is asked for. A `CIMultiDict` per request with those
lookups cost some 10,000 instructions, 6 % of a proxied request, and a dict of
lower-cased names built per request still 4,000 (nginx's `headers_in` and
Starlette's `Headers` answer the same cost the same way). Everything else still
reads the multidict (`edge.inbound.Exchange.headers`).
"""

from __future__ import annotations

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


class Fields:
    """Header values by lower-case name (as bytes: `b"authorization"`), in the order
    received."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def getall(self, name: bytes) -> list[str]:
        """Every value of the field `name` (lower case), in the order received."""
        return [_text(value) for value in self._values(name)]

    def get(self, name: bytes) -> str | None:
        """The first value of the field `name` (lower case), or None."""
        values = self._values(name)
        return _text(values[0]) if values else None

    def has(self, name: bytes) -> bool:
        return bool(self._values(name))

    def _values(self, name: bytes) -> list[bytes]:
        size = len(name)
        return [
            value for key, value in self._raw if len(key) == size and key.translate(_LOWER) == name
        ]


def _text(value: bytes) -> str:
    # As `Exchange.headers` reads them: bytes that are not UTF-8 survive as surrogates.
    return value.decode("utf-8", "surrogateescape")
