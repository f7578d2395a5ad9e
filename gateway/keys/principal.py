"""Who a request speaks for once authenticated: a user, through a key (or its actor token)."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Literal

from gateway.credits.refill import Refill
from gateway.policy.ratelimits import RateLimit

AuthKind = Literal["api_key", "actor_token"]
# What the upstream (or a front proxy) is told of who a request speaks for (§6).
IDENTITY_HEADERS = (
    "X-Gateway-User-Id",
    "X-Gateway-Key-Id",
    "X-Gateway-Scopes",
    "X-Gateway-Auth",
    "X-Gateway-Key-Meta",  # the key's metadata (§21): base64url of its JSON; empty: none
)
Network = IPv4Network | IPv6Network


def compact_json(value: object) -> bytes:
    """JSON as the gateway stores and forwards it: no spaces, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class CreditAccount:
    """Whose credit balance a key spends: its own, (a rotated key in its grace) its
    successor's, or (`pooled`, §21) its user's pool; with the refill schedule for
    `Retry-After`. `key_id`: the id of that balance (the pool's own id when pooled)."""

    key_id: str
    refill: Refill | None = None
    pooled: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    key_id: str
    scopes: frozenset[str]  # effective scopes
    auth: AuthKind
    scope_header: str  # X-Gateway-Scopes, built once per credential
    networks: tuple[Network, ...] = ()  # the key's allowed_cidrs; empty: anywhere
    expires_header: str | None = None  # X-Key-Expires-At, when the key expires
    # This key's own numbers for named `by: key` limits, by name (the key's rate_limits).
    limits: dict[str, RateLimit] | None = None
    credits: CreditAccount | None = None  # None: unlimited
    meta: dict[str, Any] | None = None  # the key's metadata (§21)
    # Seconds from the key's creation to its expiry (inf: none), for lifetime policies.
    lifetime: float = math.inf
    # X-Gateway-Key-Meta's value: base64url of the compact JSON, no padding; "" for none.
    meta_header: str = field(init=False, compare=False, repr=False)
    # The identity header lines (`IDENTITY_HEADERS`), as bytes: built once per credential
    # (a key's principal lives in the cache), not per request. A decision answer carries
    # every one, empty or not, so a front proxy overwrites whatever a client sent;
    # an upstream (the gateway drops every client `X-Gateway-*` header) is sent only
    # those with a value: a key without metadata adds no empty line to every request.
    identity_lines: bytes = field(init=False, compare=False, repr=False)
    upstream_lines: bytes = field(init=False, compare=False, repr=False)
    # The answer's `X-Key-Expires-At` line (empty: the key does not expire), likewise.
    expires_line: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        encoded = ""
        if self.meta is not None:
            encoded = base64.urlsafe_b64encode(compact_json(self.meta)).rstrip(b"=").decode()
        object.__setattr__(self, "meta_header", encoded)
        headers = self.identity_headers()
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        object.__setattr__(self, "identity_lines", lines.encode("utf-8", "surrogateescape"))
        sent = "".join(f"{name}: {value}\r\n" for name, value in headers if value)
        object.__setattr__(self, "upstream_lines", sent.encode("utf-8", "surrogateescape"))
        expires = self.expires_header
        line = b"" if expires is None else f"X-Key-Expires-At: {expires}\r\n".encode()
        object.__setattr__(self, "expires_line", line)

    def identity_headers(self) -> list[tuple[str, str]]:
        """`IDENTITY_HEADERS` with this principal's values."""
        values = (self.user_id, self.key_id, self.scope_header, self.auth, self.meta_header)
        return list(zip(IDENTITY_HEADERS, values, strict=True))

    def allows_address(self, client: str) -> bool:
        """Whether the client address is in the key's allowed networks (any, when none)."""
        if not self.networks:
            return True
        try:
            address: IPv4Address | IPv6Address = ip_address(client)
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3
        return any(address in network for network in self.networks)
