"""Webhook destinations (§17): which addresses are public, in every spelling."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.webhooks.destinations import Destinations, is_public, shown

NOT_PUBLIC = [
    "127.0.0.1", "127.255.0.9", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255",
    "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.127.255.254", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1", "2002:7f00:1::1", "2002:a00:1::1",
]  # fmt: skip
PUBLIC = ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111",
          "::ffff:8.8.8.8", "64:ff9b::808:808"]  # fmt: skip


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    assert not Destinations([]).allows(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_allowed_networks_open_exactly_themselves() -> None:
    allowed = Destinations(["127.0.0.0/8", "10.20.0.0/16"])
    assert allowed.allows("127.0.0.1") and allowed.allows("10.20.3.4")
    assert not allowed.allows("10.21.0.1") and not allowed.allows("169.254.169.254")
    assert not allowed.allows("::1")


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "localhost", "[::1]",
     "[::ffff:127.0.0.1]", "169.254.169.254", "[64:ff9b::a9fe:a9fe]", "no-such-host.invalid"],
)  # fmt: skip
async def test_registration_resolves_every_spelling_and_refuses_it(host: str) -> None:
    refusal = await Destinations([]).refusal(f"http://{host}:8081/admin/v1/keys")
    assert refusal is not None and ("not a public address" in refusal or "resolve" in refusal)


async def test_an_allowed_loopback_registers() -> None:
    assert await Destinations(["127.0.0.0/8", "::1/128"]).refusal("http://localhost:9/x") is None


def test_userinfo_is_never_shown() -> None:
    assert (
        shown("https://bob:s3cret@hooks.example.com/in?a=1")
        == "https://***@hooks.example.com/in?a=1"
    )
    assert shown("https://hooks.example.com/in") == "https://hooks.example.com/in"
