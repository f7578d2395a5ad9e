"""What a front proxy is told: allow with the identity headers, or the refusal."""

from __future__ import annotations

from gateway.edge.decide import Decision
from gateway.foundation.problems import Problem
from gateway.http1.messages import Reply
from gateway.http1.wire import encode_headers
from gateway.keys.principal import IDENTITY_HEADERS

NO_STORE = {"Cache-Control": "no-store"}
_NOBODY = encode_headers(dict.fromkeys(IDENTITY_HEADERS, ""))


def allow(decision: Decision, request_id: str, limits: dict[str, str]) -> bytes:
    """The header lines of a 200 with no body: every identity header present (empty on
    a public route), so the front proxy overwrites whatever copy a client sent."""
    principal = decision.principal
    identity = principal.identity_lines if principal is not None else _NOBODY
    expiry = principal.expires_header if principal is not None else None
    # Lines, not a dict merged and encoded per answer, nor a `Reply`.
    route = f"X-Gateway-Route: {decision.route.name}\r\n".encode("utf-8", "surrogateescape")
    limited = encode_headers(limits) if limits else b""
    text = (f"X-Key-Expires-At: {expiry}\r\n" if expiry is not None else "") + (
        f"X-Request-Id: {request_id}\r\nCache-Control: no-store\r\n"
    )
    return identity + route + limited + text.encode("utf-8", "surrogateescape")


def refuse(endpoint: str, problem: Problem, request_id: str, limits: dict[str, str]) -> Reply:
    """The status a proxied request would get, with its problem body and headers.

    nginx's `auth_request` understands only 401 and 403 (anything else becomes a
    500), so that endpoint answers one of those, with the real status and reason in
    `X-Gateway-Deny-Status` and `X-Gateway-Deny-Reason`."""
    if endpoint != "auth-request":
        return problem.reply(request_id, {**NO_STORE, **limits})
    deny = {"X-Gateway-Deny-Status": str(problem.status), "X-Gateway-Deny-Reason": problem.slug}
    status = problem.status if problem.status in (401, 403) else 403
    told = Problem(
        status, problem.slug, problem.detail, headers=problem.headers, extra=problem.extra
    )
    return told.reply(request_id, {**NO_STORE, **limits, **deny})
