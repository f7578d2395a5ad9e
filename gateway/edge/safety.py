"""Step 1 of the pipeline: refuse requests the gateway cannot treat safely.

What is refused here never reaches matching, so the path the policy sees is
unambiguous and is the exact path sent upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from gateway.forward.proxy import Incoming
from gateway.policy.paths import split_path
from gateway.problems import Problem, bad_request

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
_QUERY_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\U0010ffff#]")
_VERSIONS = frozenset({(1, 0), (1, 1)})


@dataclass(frozen=True, slots=True)
class Target:
    raw: str  # path and query exactly as received, forwarded byte for byte
    path: str  # the raw path, without the query
    segments: list[str]  # decoded, what the routes are matched against


class Head(Incoming, Protocol):
    """A request's head as the listener parsed it: aiohttp's request or an inbound `Exchange`."""

    @property
    def raw_path(self) -> str: ...  # path and query, as received
    @property
    def version(self) -> tuple[int, int]: ...


def check(request: Head, max_header_bytes: int) -> Target:
    """The request's target if it is safe to route; raises a 400/431 `Problem`."""
    check_message(request, max_header_bytes)
    return check_target(request.method, request.raw_path)


def check_target(method: str, raw: str) -> Target:
    """A method and request target (as received, or as a front proxy reports them)."""
    if not _METHOD.fullmatch(method):
        raise bad_request("bad-method", "the method must be an upper-case token")
    path, sep, query = raw.partition("?")
    if sep and _QUERY_FORBIDDEN.search(query):
        raise bad_request("bad-query", "the query has characters that must be percent-encoded")
    return Target(raw, path, split_path(path))


def check_message(request: Head, max_header_bytes: int) -> None:
    """Protocol, header size and framing: what only the listener itself can judge."""
    if request.version not in _VERSIONS:
        raise bad_request("bad-protocol", "only HTTP/1.0 and HTTP/1.1 are served")
    size = len(request.method) + len(request.raw_path) + 11
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4
    if size > max_header_bytes:
        raise Problem(431, "headers-too-large", "the request headers are too large")
    headers = request.headers
    lengths = headers.getall("Content-Length", [])
    encodings = headers.getall("Transfer-Encoding", [])
    if lengths and encodings:
        raise bad_request("bad-framing", "both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or len(encodings) > 1:
        raise bad_request("bad-framing", "repeated framing header")
    if encodings and encodings[0].strip().lower() != "chunked":
        raise bad_request("bad-framing", "only chunked transfer-encoding is accepted")
