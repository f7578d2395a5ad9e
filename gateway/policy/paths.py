"""Path canonicalisation: the decoded segments a route is matched against.

Anything that two HTTP implementations could read differently (dot segments,
encoded separators, double encoding, empty segments) is refused, so the path
the policy checks is unambiguous and is forwarded byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.foundation.problems import Problem, bad_request

# RFC 3986 pchar plus "/" — everything else must arrive percent-encoded.
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Encoded "/", "\", "." and "%" (double encoding), and encoded control characters.
_ENCODED_FORBIDDEN = re.compile(r"%(?:2[EeFf5]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")


def split_path(path: str) -> tuple[str, ...]:
    """Decoded path segments; raises a 400 `Problem` for anything ambiguous."""
    if not _PATH.fullmatch(path):
        if not path.startswith("/"):
            raise bad_request("bad-path", "the path must begin with '/'")
        raise bad_request("bad-path", "the path has characters that must be percent-encoded")
    if path == "/":
        return ()
    if "%" in path:
        if _PERCENT.search(path):
            raise bad_request("bad-path", "malformed percent-encoding")
        if _ENCODED_FORBIDDEN.search(path):
            raise bad_request("bad-path", "encoded '/', '\\', '.', '%' or control character")
    segments = path[1:].split("/")
    for i, segment in enumerate(segments):
        if not segment and i != len(segments) - 1:
            raise bad_request("bad-path", "empty path segment")
        if segment.partition(";")[0] in (".", ".."):
            raise bad_request("bad-path", "dot segment in the path")
    if "%" not in path:
        return tuple(segments)
    try:
        return tuple([unquote(segment, errors="strict") for segment in segments])
    except UnicodeDecodeError:
        raise bad_request("bad-path", "percent-encoding is not UTF-8") from None


_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
_QUERY_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\U0010ffff#]")
_SERVED = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Tokens `_METHOD` accepts, known without running it (a regular expression a request).
_COMMON_METHODS = frozenset(_SERVED.split(", "))


@dataclass(slots=True, init=False)  # one per request: see `http1.framing.Data`
class Target:
    raw: str  # path and query exactly as received, forwarded byte for byte
    path: str  # the raw path, without the query
    segments: tuple[str, ...]  # decoded, what the routes are matched against

    def __init__(self, raw: str, path: str, segments: tuple[str, ...]) -> None:
        self.raw, self.path, self.segments = raw, path, segments


def check_target(
    method: str, raw: str, split: Callable[[str], tuple[str, ...]] = split_path
) -> Target:
    """A method and request target (as received, or as a front proxy reports them);
    raises a 400 (or, for CONNECT, 405) `Problem`. `split`: `split_path`, or the same
    remembered (`edge.safety.Targets`)."""
    if method not in _COMMON_METHODS and not _METHOD.fullmatch(method):
        raise bad_request("bad-method", "the method must be an upper-case token")
    if method == "CONNECT":
        # A gateway in front of HTTP APIs opens no tunnels (nginx answers the same).
        raise Problem(
            405, "method-not-allowed", "CONNECT is not served", headers={"Allow": _SERVED}
        )
    path, sep, query = raw.partition("?")
    if sep and _QUERY_FORBIDDEN.search(query):
        raise bad_request("bad-query", "the query has characters that must be percent-encoded")
    return Target(raw, path, split(path))
