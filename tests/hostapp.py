"""A host application for the API keys page tests: it signs session JWTs with real keys
and serves its JWKS on loopback (counting fetches)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

ISSUER = "https://host.example"
AUDIENCE = "gateway-keys-page"
COOKIE = "host_session"


@dataclass
class HostIdentity:
    ed_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    fetches: int = 0
    url: str = ""

    def jwks(self) -> dict[str, Any]:
        ed = json.loads(OKPAlgorithm.to_jwk(self.ed_key.public_key()))
        rs = json.loads(RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        return {
            "keys": [
                {**ed, "kid": "ed-1", "alg": "EdDSA", "use": "sig"},
                {**rs, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            ]
        }

    def claims(self, user: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "email": f"{user}@example.com"}
        return {**base, "iat": now, "exp": now + 600, **extra}

    def token(self, user: str, *, kid: str = "ed-1", **extra: Any) -> str:
        claims = self.claims(user, **extra)
        if kid.startswith("rsa"):
            return jwt.encode(claims, self.rsa_key, "RS256", headers={"kid": kid})
        return jwt.encode(claims, self.ed_key, "EdDSA", headers={"kid": kid})

    def session_config(self, **overrides: Any) -> dict[str, Any]:
        session = {
            "jwks_url": f"{self.url}/jwks.json",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "cookie": COOKIE,
            "login_url": f"{self.url}/login",
            **overrides,
        }
        return {"enabled": True, "session": session}


@asynccontextmanager
async def host_app() -> AsyncIterator[HostIdentity]:
    identity = HostIdentity()

    async def jwks(_request: web.Request) -> web.Response:
        identity.fetches += 1
        return web.json_response(identity.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    identity.url = f"http://{host}:{port}"
    try:
        yield identity
    finally:
        await runner.cleanup()


@pytest.fixture
async def host() -> AsyncIterator[HostIdentity]:
    async with host_app() as identity:
        yield identity
