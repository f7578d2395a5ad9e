"""API key format: `<prefix>_<32 base62 random><6 base62 CRC32 of the random part>`.

The checksum lets the gateway reject typos and random guesses before it touches
the cache or the database.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Every two-digit base62 string, so a 6-digit checksum is three look-ups, not six divisions.
_PAIRS = tuple(a + b for a in ALPHABET for b in ALPHABET)
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
    """`base62(crc32(random_part), 6)`, by two-digit steps (it runs on every request)."""
    number = zlib.crc32(random_part.encode("ascii"))
    high, low = divmod(number, 3844)
    top, middle = divmod(high, 3844)
    return _PAIRS[top] + _PAIRS[middle] + _PAIRS[low]


def generate(prefix: str) -> str:
    """A new key: 32 base62 characters carry log2(62**32) ≈ 190 bits of entropy."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{prefix}_{random_part}{checksum(random_part)}"


_BODY = re.compile(f"[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def is_well_formed(token: str, prefix: str) -> bool:
    """Prefix, length, alphabet and checksum are right: worth a lookup."""
    start = len(prefix) + 1
    if not token.startswith(prefix) or token[start - 1 : start] != "_":
        return False
    body = token[start:]
    if not _BODY.fullmatch(body):
        return False
    return checksum(body[:RANDOM_LENGTH]) == body[RANDOM_LENGTH:]


def digest(token: str) -> bytes:
    """What is stored and what the cache is keyed by: SHA-256 of the whole key (of any
    credential as received: a request's is hashed before its format is checked)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LENGTH]
