"""The client address: the peer, or behind trusted proxies the rightmost untrusted hop."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.edge.clients import ClientAddresses
from gateway.keys.principal import Principal


def headers(*forwarded: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict([("X-Forwarded-For", value) for value in forwarded]))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("192.0.2.1", ("203.0.113.9",), "192.0.2.1"),  # an untrusted peer is the client
        ("10.0.0.5", ("203.0.113.9",), "203.0.113.9"),
        ("10.0.0.5", ("6.6.6.6, 203.0.113.9",), "203.0.113.9"),  # the client wrote 6.6.6.6
        ("10.0.0.5", ("203.0.113.9, 10.0.0.7",), "203.0.113.9"),  # two trusted hops
        ("10.0.0.5", ("203.0.113.9", "10.0.0.7"), "203.0.113.9"),  # as two header lines
        ("10.0.0.5", ("10.0.0.8, 10.0.0.7",), "10.0.0.8"),  # all trusted: the leftmost
        ("10.0.0.5", (), "10.0.0.5"),
        ("10.0.0.5", ("garbage, 10.0.0.7",), "10.0.0.7"),  # unreadable: the last trusted
        ("10.0.0.5", ("203.0.113.9, garbage",), "10.0.0.5"),
        ("fd00::1", ("2001:db8::5",), "2001:db8::5"),
    ],
)
def test_the_rightmost_untrusted_hop(peer: str, forwarded: tuple[str, ...], client: str) -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "fd00::/8"])
    assert addresses.of(peer, headers(*forwarded)) == client


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    addresses = ClientAddresses([])
    assert not addresses.enabled
    assert addresses.of("192.0.2.1", headers("203.0.113.9")) == "192.0.2.1"


@pytest.mark.parametrize(
    ("peer", "told", "own", "scheme"),
    [
        ("10.0.0.5", "https", "http", "https"),  # the trusted proxy ended the client's TLS
        ("10.0.0.5", "HTTPS ", "http", "https"),
        ("10.0.0.5", "gopher", "http", "http"),  # not a scheme we pass on
        ("10.0.0.5", None, "https", "https"),
        ("192.0.2.1", "https", "http", "http"),  # the client's own word is not taken
    ],
)
def test_the_scheme_is_believed_from_trusted_proxies_only(
    peer: str, told: str | None, own: str, scheme: str
) -> None:
    sent = CIMultiDictProxy(CIMultiDict({"X-Forwarded-Proto": told} if told else {}))
    assert ClientAddresses(["10.0.0.0/8"]).scheme(peer, sent, own) == scheme


def test_allowed_networks_match_v4_v6_and_v4_mapped_addresses() -> None:
    from ipaddress import ip_network

    principal = Principal(
        "u", "k", frozenset(), "api_key", "",
        (ip_network("203.0.113.0/24"), ip_network("2001:db8::/32")),
    )  # fmt: skip
    assert principal.allows_address("203.0.113.200")
    assert principal.allows_address("::ffff:203.0.113.7")
    assert principal.allows_address("2001:db8::1")
    assert not principal.allows_address("198.51.100.1")
    assert not principal.allows_address("not an address")
    assert Principal("u", "k", frozenset(), "api_key", "").allows_address("anything")
