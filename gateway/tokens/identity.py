"""Identity to upstreams as a signed JWT (§15): `X-Gateway-Identity`.

Headers such as `X-Gateway-User-Id` can be trusted only if nothing but the gateway
reaches the upstream; a signed assertion can be checked against the JWKS. Tokens
live 60 s and are cached per credential and upstream, re-signed once fewer than
30 s remain: a hot key costs no signature per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.keys.principal import Principal
from gateway.tokens.actor import Signer

LIFETIME_SECONDS = 60
RESIGN_BELOW_SECONDS = 30
MAX_CACHED = 10_000


class IdentityTokens:
    def __init__(self, signer: Signer, issuer: str, clock: Callable[[], float] = time.time):
        self._signer = signer
        self._issuer = issuer
        self._clock = clock
        self._cache: dict[tuple[str, str, str, str, str], tuple[str, float]] = {}
        self.signed = 0  # counted: tests show a hot key is not signed per request

    def token(self, principal: Principal, upstream: str) -> str:
        now = self._clock()
        # An actor token may carry fewer scopes than its key: the scopes are in the key;
        # so is the metadata, which an admin may change at any time.
        key = (
            principal.key_id,
            principal.auth,
            principal.scope_header,
            upstream,
            principal.meta_header,
        )
        cached = self._cache.get(key)
        if cached is not None and cached[1] - now >= RESIGN_BELOW_SECONDS:
            return cached[0]
        issued = int(now)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "aud": upstream,
            "sub": principal.user_id,
            "key_id": principal.key_id,
            "scope": principal.scope_header,
            "auth": principal.auth,
            "iat": issued,
            "exp": issued + LIFETIME_SECONDS,
        }
        if principal.meta is not None:
            claims["meta"] = principal.meta
        token = self._signer.sign(claims)
        self.signed += 1
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (token, issued + LIFETIME_SECONDS)
        return token
