from __future__ import annotations

import math
import zlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.keys import format as key_format


def test_generated_keys_have_the_contract_format() -> None:
    key = key_format.generate("gwk")
    prefix, _, body = key.partition("_")
    assert prefix == "gwk"
    assert len(body) == 38
    assert set(body) <= set(key_format.ALPHABET)
    assert key_format.is_well_formed(key, "gwk")
    assert math.log2(62**32) >= 190


def test_checksum_is_base62_crc32_of_the_random_part() -> None:
    random_part = "0" * 32
    crc = zlib.crc32(random_part.encode())
    digits = ""
    while crc:
        crc, rest = divmod(crc, 62)
        digits = key_format.ALPHABET[rest] + digits
    assert key_format.checksum(random_part) == digits.rjust(6, "0")
    assert key_format.base62(0, 6) == "000000"
    assert key_format.base62(61, 2) == "0z"


def test_wrong_prefix_length_alphabet_or_checksum_is_rejected() -> None:
    key = key_format.generate("gwk")
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert not key_format.is_well_formed(flipped, "gwk")
    assert not key_format.is_well_formed("xyz" + key[3:], "gwk")
    assert not key_format.is_well_formed(key + "0", "gwk")
    assert not key_format.is_well_formed(key[:-1], "gwk")
    assert not key_format.is_well_formed(key.replace("_", "-"), "gwk")
    assert not key_format.is_well_formed(key[:10] + "!" + key[11:], "gwk")
    assert not key_format.is_well_formed("", "gwk")


@given(st.text(max_size=60))
def test_parser_never_crashes_and_accepts_only_checksummed_keys(token: str) -> None:
    if key_format.is_well_formed(token, "gwk"):
        body = token[4:]
        assert key_format.checksum(body[:32]) == body[32:]


def test_digest_and_display_prefix() -> None:
    key = key_format.generate("gwk")
    assert len(key_format.digest(key)) == 32
    assert key_format.display_prefix(key) == key[:12]
