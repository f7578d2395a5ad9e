"""Who the client is, by address: the TCP peer, unless the peer is a trusted proxy
(`trusted_proxies`); then the rightmost `X-Forwarded-For` address that is not itself
trusted — every hop left of it could have been written by the client.

One answer per request, used alike by `allowed_cidrs`, `by: ip` rate limits, the
access log and the `X-Forwarded-For` sent upstream; the scheme for
`X-Forwarded-Proto` is believed from the same proxies.
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from multidict import CIMultiDictProxy


class ClientAddresses:
    def __init__(self, trusted_proxies: list[str]) -> None:
        self._trusted: tuple[IPv4Network | IPv6Network, ...] = tuple(
            ip_network(cidr) for cidr in trusted_proxies
        )
        self.enabled = bool(self._trusted)

    def of(self, peer: str, headers: CIMultiDictProxy[str]) -> str:
        if not self.enabled or not self._is_trusted(peer):
            return peer
        hops = [
            hop.strip()
            for value in headers.getall("X-Forwarded-For", ())
            for hop in value.split(",")
        ]
        client = peer
        for hop in reversed(hops):
            if not _is_address(hop):
                break  # a chain we cannot read: the last trusted address we passed
            client = hop
            if not self._is_trusted(hop):
                break
        return client

    def scheme(self, peer: str, headers: CIMultiDictProxy[str], own: str) -> str:
        """`http` or `https` as the client spoke it: a trusted proxy's
        `X-Forwarded-Proto` (it ended the client's TLS), else this listener's."""
        if not self.enabled or not self._is_trusted(peer):
            return own
        told = headers.get("X-Forwarded-Proto", "").strip().lower()
        return told if told in ("http", "https") else own

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one instance per process, few peers
    def _is_trusted(self, address: str) -> bool:
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in self._trusted)


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True
