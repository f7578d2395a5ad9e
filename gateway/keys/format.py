"""API key format: `<prefix>_<32 base62 random><6 base62 CRC32 of the random part>`.

The checksum lets the gateway reject typos and random guesses before it touches
the cache or the database.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHABET_SET = frozenset(ALPHABET)
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
DISPLAY_PREFIX_LENGTH = 12


def base62(number: int, width: int) -> str:
    """`number` in base62, most significant digit first, left-padded with `0`."""
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(random_part: str) -> str:
    return base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate(prefix: str) -> str:
    """A new key: 32 base62 characters carry log2(62**32) ≈ 190 bits of entropy."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{prefix}_{random_part}{checksum(random_part)}"


def is_well_formed(token: str, prefix: str) -> bool:
    """Prefix, length, alphabet and checksum are right: worth a lookup."""
    body = token[len(prefix) + 1 :]
    if (
        len(body) != RANDOM_LENGTH + CHECKSUM_LENGTH
        or not token.startswith(prefix)
        or token[len(prefix)] != "_"
        or not _ALPHABET_SET.issuperset(body)
    ):
        return False
    return checksum(body[:RANDOM_LENGTH]) == body[RANDOM_LENGTH:]


def digest(token: str) -> bytes:
    """What is stored and what the cache is keyed by: SHA-256 of the whole key."""
    return hashlib.sha256(token.encode("ascii")).digest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LENGTH]
