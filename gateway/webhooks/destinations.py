"""Where a webhook may be delivered (§17): public addresses only, unless an address is
inside `webhooks.allowed_networks`.

Whoever holds the admin token registers URLs, and each delivery's outcome is readable
afterwards: without this check the deliverer is a port scanner of the gateway's own
network (cloud metadata at 169.254.169.254, the admin port, the database). The check
runs at registration, and again at every delivery on the address actually connected
to — the resolver below checks what it resolved and the connection goes to exactly
that, so a name that resolves elsewhere the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"),)
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class DestinationRefused(OSError):
    """A webhook destination outside the public internet and `allowed_networks`."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 spelling carries (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in prefix for prefix in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: Address) -> bool:
    """Not loopback, unspecified, private, link-local, shared (100.64/10), multicast or
    reserved — nor an IPv6 spelling of one of those."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return False
        inner = _embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


class Destinations:
    """The rule for one gateway's configuration."""

    def __init__(self, allowed_networks: Sequence[str]) -> None:
        self._allowed: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network) for network in allowed_networks
        )

    def allows(self, host: str) -> bool:
        """Whether an address (as text; an IPv6 zone is ignored) may be delivered to."""
        address = ipaddress.ip_address(host.partition("%")[0])
        if any(address in network for network in self._allowed):
            return True
        return is_public(address)

    async def refusal(self, url: str) -> str | None:
        """Why `url` may not be registered, or None: every address its host resolves to
        must be allowed (a literal, or the decimal and octal spellings that resolve to one)."""
        host = urlsplit(url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            return f"{host} does not resolve"
        refused = sorted({str(info[4][0]) for info in infos if not self.allows(str(info[4][0]))})
        if refused:
            return f"{host} resolves to {', '.join(refused)}, which is not a public address"
        return None


class CheckingResolver(AbstractResolver):
    """The default resolver, refusing (as an `OSError`, which aiohttp reports as a
    connection error) any name with an address that is not allowed."""

    def __init__(self, destinations: Destinations) -> None:
        self._destinations = destinations
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if not found or not all(self._destinations.allows(r["host"]) for r in found):
            raise DestinationRefused(f"{host}: destination not allowed")
        return found

    async def close(self) -> None:
        await self._resolver.close()


def shown(url: str) -> str:
    """A URL as listings show it: userinfo (a password, a token) as `***`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc="***@" + host).geturl()
