"""The API keys page's session check: real keys, real JWTs, forgeries refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.foundation.config import Session
from gateway.selfservice.session import (
    REFETCH_SECONDS,
    Jwks,
    JwksUnavailable,
    SessionRejected,
    SessionVerifier,
)
from tests.hostapp import AUDIENCE, ISSUER, HostIdentity


class Clock:
    """The one fake: time for the refetch rule."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Serves a JWKS document, or fails, and counts the calls."""

    def __init__(self, document: dict[str, Any] | None) -> None:
        self.document = document
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.document is None:
            raise OSError("connection refused")
        return self.document


def verifier(
    identity: HostIdentity, loader: Loader, clock: Clock | None = None, **settings: Any
) -> SessionVerifier:
    session = Session(issuer=ISSUER, audience=AUDIENCE, jwks_file="unused", **settings)
    return SessionVerifier(session, Jwks(loader, clock or Clock()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if secret is None:
        return head + "."
    return head + "." + _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


@pytest.fixture
def identity() -> HostIdentity:
    return HostIdentity()


async def test_a_signed_session_names_its_user(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(identity.jwks()))
    for kid in ("ed-1", "rsa-1"):
        user = await check.verify(identity.token("alice", kid=kid))
        assert (user.id, user.name) == ("alice", "alice@example.com")


async def test_user_and_name_claims_are_configurable(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(identity.jwks()), user_claim="uid", name_claim="name")
    user = await check.verify(identity.token("ignored", uid="u-42", name="Ada"))
    assert (user.id, user.name) == ("u-42", "Ada")
    with pytest.raises(SessionRejected):
        await check.verify(identity.token("no-uid-claim"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"iss": "https://evil.example"}, "invalid"),
        ({"aud": "someone-else"}, "invalid"),
        ({"exp": -120}, "expired"),  # seconds from now, at run time
        ({"nbf": +120}, "invalid"),
        ({"act": {"sub": "api_key:x"}}, "actor token"),
    ],
)
async def test_wrong_claims_are_refused(
    identity: HostIdentity, change: dict[str, Any], expected: str
) -> None:
    check = verifier(identity, Loader(identity.jwks()))
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") else v for k, v in change.items()}
    with pytest.raises(SessionRejected, match=expected):
        await check.verify(identity.token("alice", **claims))


async def test_leeway_is_thirty_seconds(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(identity.jwks()))
    await check.verify(identity.token("alice", exp=int(time.time()) - 20))
    with pytest.raises(SessionRejected):
        await check.verify(identity.token("alice", exp=int(time.time()) - 45))


async def test_missing_exp_is_refused(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(identity.jwks()))
    claims = identity.claims("alice")
    del claims["exp"]
    token = jwt.encode(claims, identity.ed_key, "EdDSA", headers={"kid": "ed-1"})
    with pytest.raises(SessionRejected):
        await check.verify(token)


async def test_forgeries_are_refused(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(identity.jwks()))
    claims = identity.claims("alice")
    public_pem = identity.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forgeries = [
        _hand_made({"alg": "none", "kid": "ed-1", "typ": "JWT"}, claims, None),
        # The classic: HMAC keyed with the public key the JWKS publishes.
        _hand_made({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims, public_pem),
        # A key of ours, an algorithm of another key.
        jwt.encode(claims, identity.rsa_key, "RS256", headers={"kid": "ed-1"}),
        # Signed by a stranger under our kid.
        HostIdentity().token("alice"),
        # Unknown kid.
        identity.token("alice", kid="rsa-2"),
        # Pointers elsewhere in the header.
        jwt.encode(
            claims, identity.ed_key, "EdDSA", headers={"kid": "ed-1", "jku": "http://evil/"}
        ),
        # Not a JWT at all: an API key.
        "gwk_" + "A" * 38,
    ]
    for token in forgeries:
        with pytest.raises(SessionRejected):
            await check.verify(token)


async def test_an_algorithm_outside_the_list_is_refused(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(identity.jwks()), algorithms=["EdDSA"])
    with pytest.raises(SessionRejected):
        await check.verify(identity.token("alice", kid="rsa-1"))


async def test_an_unknown_kid_refetches_at_most_once_a_minute(identity: HostIdentity) -> None:
    clock, loader = Clock(), Loader(identity.jwks())
    check = verifier(identity, loader, clock)
    await check.verify(identity.token("alice"))
    assert loader.calls == 1
    for _ in range(20):
        with pytest.raises(SessionRejected):
            await check.verify(identity.token("alice", kid="rsa-9"))
    assert loader.calls == 1  # all inside the first minute
    clock.now += REFETCH_SECONDS
    with pytest.raises(SessionRejected):
        await check.verify(identity.token("alice", kid="rsa-9"))
    assert loader.calls == 2
    await check.verify(identity.token("alice"))
    assert loader.calls == 2  # a known kid needs no fetch


async def test_rotated_host_keys_are_picked_up_on_the_unknown_kid(identity: HostIdentity) -> None:
    clock, loader = Clock(), Loader({"keys": identity.jwks()["keys"][:1]})
    check = verifier(identity, loader, clock)
    await check.verify(identity.token("alice"))
    loader.document = identity.jwks()  # the host adds rsa-1
    clock.now += REFETCH_SECONDS + 1
    assert (await check.verify(identity.token("bob", kid="rsa-1"))).id == "bob"


async def test_jwks_unreachable_with_nothing_cached_is_unavailable(identity: HostIdentity) -> None:
    check = verifier(identity, Loader(None))
    with pytest.raises(JwksUnavailable):
        await check.verify(identity.token("alice"))


async def test_jwks_unreachable_later_keeps_the_cached_keys(identity: HostIdentity) -> None:
    clock, loader = Clock(), Loader(identity.jwks())
    check = verifier(identity, loader, clock)
    await check.verify(identity.token("alice"))
    loader.document = None
    clock.now += 3600  # stale: a refresh is attempted and fails
    assert (await check.verify(identity.token("alice"))).id == "alice"
    assert loader.calls == 2


async def test_a_shared_secret_in_the_jwks_is_never_used(identity: HostIdentity) -> None:
    secret = {"kty": "oct", "kid": "hs", "k": _b64(b"s" * 32), "alg": "HS256"}
    check = verifier(identity, Loader({"keys": [secret]}), algorithms=["EdDSA"])
    token = jwt.encode(identity.claims("alice"), b"s" * 32, "HS256", headers={"kid": "hs"})
    with pytest.raises(SessionRejected):
        await check.verify(token)


async def test_concurrent_first_requests_share_one_fetch(identity: HostIdentity) -> None:
    class SlowLoader(Loader):
        async def __call__(self) -> dict[str, Any]:
            await asyncio.sleep(0.05)  # the fetch is in flight while the others arrive
            return await super().__call__()

    loader = SlowLoader(identity.jwks())
    check = verifier(identity, loader)
    users = await asyncio.gather(*(check.verify(identity.token(f"u{i}")) for i in range(10)))
    assert [user.id for user in users] == [f"u{i}" for i in range(10)]
    assert loader.calls == 1
