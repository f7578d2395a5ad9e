"""Who is signed in to the API keys page: the host application's session JWT.

Verified like an actor token — signature, `alg` from the configured list (never
`none` or HMAC), `kid` from the host's JWKS, `iss`, `aud`, `exp`/`nbf` with 30 s
leeway — and never an API key or an actor token: a key cannot create keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from gateway.foundation.config import Session

log = logging.getLogger("gateway.selfservice")
LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8192
MAX_JWKS_BYTES = 1024 * 1024
# An unknown `kid` may mean the host rotated its keys: refetch, at most this often.
REFETCH_SECONDS = 60.0
# Keys are refreshed this long after the last good fetch, so removed keys stop working.
MAX_AGE_SECONDS = 600.0
_FORBIDDEN_HEADERS = ("jku", "jwk", "x5u", "x5c", "crit")

Clock = Callable[[], float]
JwksLoader = Callable[[], Awaitable[dict[str, Any]]]


class SessionRejected(Exception):
    """No usable session: 401. The message is safe to show; it never holds the token."""


class JwksUnavailable(Exception):
    """The host's JWKS cannot be had and nothing is cached: 503."""


@dataclass(frozen=True, slots=True)
class SessionUser:
    id: str
    name: str


class Jwks:
    """The host's signing keys by `kid`, fetched lazily and refreshed as above."""

    def __init__(self, load: JwksLoader, clock: Clock = time.monotonic) -> None:
        self._load = load
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] | None = None
        self._fetched_at = 0.0
        self._attempted_at = -REFETCH_SECONDS
        self._lock = asyncio.Lock()
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}

    async def key(self, kid: str, alg: str) -> jwt.PyJWK | None:
        """The key for `kid`, usable with `alg`; None when the JWKS has no such key."""
        # A fetch under way (the lock is held) is awaited, not raced past.
        if self._wants_fetch(kid) or self._lock.locked():
            await self._refresh(kid)
        if self._keys is None:
            raise JwksUnavailable("the session keys cannot be fetched")
        data = self._keys.get(kid)
        if data is None or data.get("alg", alg) != alg:
            return None
        parsed = self._parsed.get((kid, alg))
        if parsed is None:
            try:
                parsed = jwt.PyJWK(data, algorithm=alg)
            except jwt.PyJWTError:
                return None  # a key of another type than `alg` needs
            self._parsed[kid, alg] = parsed
        return parsed

    def _wants_fetch(self, kid: str) -> bool:
        now = self._clock()
        if now - self._attempted_at < REFETCH_SECONDS:
            return False
        return (
            self._keys is None or kid not in self._keys or now - self._fetched_at >= MAX_AGE_SECONDS
        )

    async def _refresh(self, kid: str) -> None:
        async with self._lock:
            if not self._wants_fetch(kid):
                return  # another request fetched while this one waited
            self._attempted_at = self._clock()
            try:
                self._keys = _signing_keys(await self._load())
            except (OSError, TimeoutError, ValueError, aiohttp.ClientError) as exc:
                state = "keeping the cached keys" if self._keys is not None else "none cached"
                log.warning("session JWKS fetch failed (%s): %s", state, exc)
                return
            self._fetched_at = self._attempted_at
            self._parsed.clear()


def _signing_keys(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS: no `keys` list")
    return {
        key["kid"]: key
        for key in keys
        if isinstance(key, dict)
        and isinstance(key.get("kid"), str)
        and key.get("use", "sig") == "sig"
        and key.get("kty") != "oct"  # a shared secret is never a session key
    }


def file_loader(path: Path) -> JwksLoader:
    async def load() -> dict[str, Any]:
        data = json.loads((await asyncio.to_thread(path.read_bytes))[:MAX_JWKS_BYTES])
        if not isinstance(data, dict):
            raise ValueError("not a JWKS: not a JSON object")
        return data

    return load


def url_loader(session: aiohttp.ClientSession, url: str) -> JwksLoader:
    async def load() -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"{url}: larger than {MAX_JWKS_BYTES} bytes")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JWKS: not a JSON object")
        return data

    return load


class SessionVerifier:
    def __init__(self, settings: Session, jwks: Jwks) -> None:
        self._settings = settings
        self._jwks = jwks
        self._algorithms = frozenset(settings.algorithms)
        self._required = ["exp", "iss", "aud", settings.user_claim]

    async def verify(self, token: str) -> SessionUser:
        """The signed-in user; raises `SessionRejected` (401) or `JwksUnavailable` (503)."""
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise SessionRejected("not a session token (API keys are not accepted here)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise SessionRejected("malformed session token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms or not isinstance(kid, str):
            raise SessionRejected("session token signed with a refused algorithm or no kid")
        if any(name in header for name in _FORBIDDEN_HEADERS):
            raise SessionRejected("session token header refused")
        key = await self._jwks.key(kid, str(alg))
        if key is None:
            raise SessionRejected("session token signed by an unknown key")
        return self._user(self._decode(token, key, str(alg)))

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise SessionRejected("expired session") from None
        except jwt.PyJWTError:
            raise SessionRejected("invalid session token") from None
        if "act" in claims:
            raise SessionRejected("an actor token is not a session")
        return claims

    def _user(self, claims: dict[str, Any]) -> SessionUser:
        user_id = claims[self._settings.user_claim]
        if (
            not isinstance(user_id, str)
            or not 1 <= len(user_id) <= 200
            or not user_id.isprintable()
        ):
            raise SessionRejected("the session's user claim is not a usable user id")
        name = claims.get(self._settings.name_claim)
        if not isinstance(name, str) or not name.isprintable():
            name = user_id
        return SessionUser(user_id, name[:200])
