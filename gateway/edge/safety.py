"""Step 1 of the pipeline: refuse request targets the gateway cannot treat safely.

What is refused here never reaches matching, so the path the policy sees is
unambiguous and is the exact path sent upstream. The message itself (protocol,
header size, framing) was judged by the reader before (`http1.reader`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.policy.paths import split_path
from gateway.problems import Problem, bad_request

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
_QUERY_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\U0010ffff#]")
_SERVED = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@dataclass(frozen=True, slots=True)
class Target:
    raw: str  # path and query exactly as received, forwarded byte for byte
    path: str  # the raw path, without the query
    segments: list[str]  # decoded, what the routes are matched against


def check_target(method: str, raw: str) -> Target:
    """A method and request target (as received, or as a front proxy reports them);
    raises a 400 (or, for CONNECT, 405) `Problem`."""
    if not _METHOD.fullmatch(method):
        raise bad_request("bad-method", "the method must be an upper-case token")
    if method == "CONNECT":
        # A gateway in front of HTTP APIs opens no tunnels (nginx answers the same).
        raise Problem(
            405, "method-not-allowed", "CONNECT is not served", headers={"Allow": _SERVED}
        )
    path, sep, query = raw.partition("?")
    if sep and _QUERY_FORBIDDEN.search(query):
        raise bad_request("bad-query", "the query has characters that must be percent-encoded")
    return Target(raw, path, split_path(path))
