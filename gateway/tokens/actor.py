"""Actor tokens: short-lived JWTs minted for a key (RFC 8693 `act`), and their verification.

Only our own keys and algorithms verify: `kid` must be one of ours, `alg` must
be that key's, and headers that point elsewhere (`jku`, `jwk`, `x5u`, `x5c`) or
demand unknown processing (`crit`) are refused before any signature check.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import TTLCache

from gateway.foundation.config import Tokens
from gateway.tokens.signing import SigningKey

LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8192
_FORBIDDEN_HEADERS = ("jku", "jwk", "x5u", "x5c", "crit")
_KEY_SUBJECT = re.compile(r"api_key:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_REQUIRED = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti", "scope", "act")


class TokenRejected(Exception):
    """`reason` is `expired` or `invalid`; never carries the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ActorClaims:
    user_id: str
    key_id: str
    scopes: frozenset[str]
    expires_at: float
    not_before: float


class Signer:
    """Mints and verifies actor tokens with the configured keys; the first one signs."""

    def __init__(self, keys: Sequence[SigningKey], settings: Tokens, clock: Any = time.time):
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = {key.kid: key for key in keys}
        self._active = keys[0]
        self._settings = settings
        self._clock = clock
        self._verified: TTLCache[bytes, ActorClaims] = TTLCache(10_000, 60, timer=clock)
        self.jwks = {"keys": [key.jwk() for key in keys]}

    def mint(self, user_id: str, key_id: str, scopes: Sequence[str], ttl: int) -> str:
        now = int(self._clock())
        claims = {
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "sub": user_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
            "scope": " ".join(sorted(scopes)),
            "act": {"sub": f"api_key:{key_id}"},
        }
        headers = {"kid": self._active.kid, "typ": "JWT"}
        return jwt.encode(claims, self._active.private_key, self._active.alg, headers=headers)

    def sign(self, claims: dict[str, Any]) -> str:
        """Any claims, signed with the active key (`kid` and `typ: JWT` in the header)."""
        headers = {"kid": self._active.kid, "typ": "JWT"}
        return jwt.encode(claims, self._active.private_key, self._active.alg, headers=headers)

    def verify(self, token: str) -> ActorClaims:
        digest = hashlib.sha256(token.encode()).digest()
        claims = self._verified.get(digest)
        if claims is None:
            claims = self._decode(token)
            self._verified[digest] = claims
        now = self._clock()
        if now > claims.expires_at + LEEWAY_SECONDS:
            raise TokenRejected("expired")
        if now < claims.not_before - LEEWAY_SECONDS:
            raise TokenRejected("invalid")
        return claims

    def _decode(self, token: str) -> ActorClaims:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("invalid")
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(header.get("kid"))  # type: ignore[arg-type]
            if key is None or header.get("alg") != key.alg or header.get("typ") != "JWT":
                raise TokenRejected("invalid")
            if any(name in header for name in _FORBIDDEN_HEADERS):
                raise TokenRejected("invalid")
            # exp/nbf are checked by verify() with the injected clock.
            payload = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                options={
                    "require": list(_REQUIRED),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise TokenRejected("invalid") from None
        return _claims(payload)


def _claims(payload: dict[str, Any]) -> ActorClaims:
    act, scope, sub = payload["act"], payload["scope"], payload["sub"]
    subject = _KEY_SUBJECT.fullmatch(act.get("sub", "")) if isinstance(act, dict) else None
    numbers = (payload["exp"], payload["nbf"])
    if (
        subject is None
        or not isinstance(scope, str)
        or not isinstance(sub, str)
        or not all(isinstance(n, int | float) for n in numbers)
    ):
        raise TokenRejected("invalid")
    return ActorClaims(
        sub, subject[1], frozenset(scope.split()), float(numbers[0]), float(numbers[1])
    )
