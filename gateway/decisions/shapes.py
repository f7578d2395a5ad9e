"""How each front proxy describes the original request. Each endpoint reads only its own
headers — never `Forwarded`, never another endpoint's — so a client cannot pick the
description that suits it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.foundation.problems import Problem
from gateway.http1.fields import Fields
from gateway.http1.wire import HeaderNames

EXT_AUTHZ_PREFIX = "/decisions/ext-authz"


class Asking(Protocol):
    """A request to a decision endpoint (`edge.inbound.Exchange`)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def fields(self) -> Fields: ...
    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...


# What a proxied request loses on the way upstream (§6.6). A front proxy passes the
# client's headers on as they are, so a decision cannot make them go: it refuses them.
_METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})


def refuse_forbidden_headers(request: Asking, names: HeaderNames) -> None:
    """400 `forbidden-header` for a method override (an upstream that honours one would
    run a method the policy never checked) or any `X-Gateway-*` header (the identity
    the front proxy adds must be the gateway's alone)."""
    for raw_name, _ in request.raw_headers:
        name = names.folded(raw_name)
        if name in _METHOD_OVERRIDES or name.startswith("x-gateway-"):
            shown = raw_name.decode("latin-1")
            raise Problem(400, "forbidden-header", f"the request may not carry {shown}")


@dataclass(slots=True, init=False)  # one per request: see `http1.framing.Data`
class Asked:
    """The original request a decision is asked about."""

    method: str
    uri: str  # raw path and query, as the client sent them
    host: str
    proto: str
    client: str

    def __init__(self, *, method: str, uri: str, host: str, proto: str, client: str) -> None:
        self.method, self.uri, self.host, self.proto, self.client = (
            method, uri, host, proto, client
        )  # fmt: skip


def _one(fields: Fields, name: str) -> str | None:
    values = fields.getall(name.lower().encode())
    if len(values) > 1:
        raise Problem(400, "ambiguous-original-request", f"{name} is repeated")
    return values[0] if values else None


def _required(fields: Fields, name: str) -> str:
    value = _one(fields, name)
    if not value:
        raise Problem(400, "missing-original-request", f"{name} is missing")
    return value


def _last_hop(forwarded_for: str | None) -> str:
    # The front proxy appends the address it saw; anything before it the client wrote.
    return forwarded_for.rsplit(",", 1)[-1].strip() if forwarded_for else ""


def auth_request(request: Asking) -> Asked:
    """nginx `auth_request`, with the headers of the README's configuration."""
    fields = request.fields
    return Asked(
        method=_required(fields, "X-Original-Method"),
        uri=_required(fields, "X-Original-URI"),
        host=_one(fields, "X-Original-Host") or "",
        proto=_one(fields, "X-Original-Proto") or "",
        client=_one(fields, "X-Original-IP") or "",
    )


def forward_auth(request: Asking) -> Asked:
    """Traefik ForwardAuth and Caddy `forward_auth`."""
    fields = request.fields
    return Asked(
        method=_required(fields, "X-Forwarded-Method"),
        uri=_required(fields, "X-Forwarded-Uri"),
        host=_one(fields, "X-Forwarded-Host") or "",
        proto=_one(fields, "X-Forwarded-Proto") or "",
        client=_last_hop(_one(fields, "X-Forwarded-For")),
    )


def ext_authz(request: Asking) -> Asked:
    """Envoy's `ext_authz` HTTP service: the original method, the original path behind
    `path_prefix`, the original headers."""
    uri = request.raw_path[len(EXT_AUTHZ_PREFIX) :]
    if not uri.startswith("/"):
        raise Problem(400, "missing-original-request", "no original path after the prefix")
    fields = request.fields
    return Asked(
        method=request.method,
        uri=uri,
        host=_one(fields, "Host") or "",
        proto=_one(fields, "X-Forwarded-Proto") or "",
        client=_last_hop(_one(fields, "X-Forwarded-For")),
    )


Shape = Callable[[Asking], Asked]


def endpoint_for(raw_path: str) -> tuple[str, Shape] | None:
    """(endpoint name, its reader) for a decision listener path, or None."""
    path = raw_path.partition("?")[0]
    if path == "/decisions/auth-request":
        return "auth-request", auth_request
    if path == "/decisions/forward-auth":
        return "forward-auth", forward_auth
    if raw_path.startswith(EXT_AUTHZ_PREFIX + "/"):
        return "ext-authz", ext_authz
    return None
