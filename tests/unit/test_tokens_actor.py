"""Actor tokens with real keys and real signatures; the clock is the only thing faked."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from gateway.foundation.config import Tokens
from gateway.tokens.actor import Signer, TokenRejected
from gateway.tokens.signing import SigningKey, algorithm_for, generate_pem

KEY_ID = str(uuid.uuid4())


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _key(kid: str = "k1", alg: str = "EdDSA") -> SigningKey:
    private = serialization.load_pem_private_key(generate_pem(alg), password=None)
    return SigningKey(kid, algorithm_for(private), private)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> Signer:
    return Signer([_key()], Tokens(), clock=clock)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_claims_are_exactly_the_contract(signer: Signer, clock: Clock) -> None:
    token = signer.mint("user-1", KEY_ID, ["projects:read", "me:read"], 300)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "gateway" and claims["aud"] == "gateway"
    assert claims["sub"] == "user-1"
    assert claims["iat"] == claims["nbf"] == int(clock.now)
    assert claims["exp"] == int(clock.now) + 300
    assert claims["scope"] == "me:read projects:read"
    assert claims["act"] == {"sub": f"api_key:{KEY_ID}"}
    assert uuid.UUID(claims["jti"])
    verified = signer.verify(token)
    assert verified.scopes == {"me:read", "projects:read"}
    assert verified.key_id == KEY_ID


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_every_supported_algorithm_round_trips(alg: str, clock: Clock) -> None:
    signer = Signer([_key(alg=alg)], Tokens(), clock=clock)
    assert signer.verify(signer.mint("u", KEY_ID, [], 60)).user_id == "u"
    [jwk] = signer.jwks["keys"]
    assert jwk["alg"] == alg and jwk["kid"] == "k1" and "d" not in jwk


def test_expiry_and_not_before_use_a_30_second_leeway(signer: Signer, clock: Clock) -> None:
    token = signer.mint("u", KEY_ID, [], 60)
    clock.now += 60 + 29
    signer.verify(token)
    clock.now += 2
    with pytest.raises(TokenRejected, match="expired"):
        signer.verify(token)
    future = signer.mint("u", KEY_ID, [], 60)
    clock.now -= 200
    with pytest.raises(TokenRejected, match="invalid"):
        signer.verify(future)


def _forge(
    signer: Signer, header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str
) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def _claims(clock: Clock, **changes: Any) -> dict[str, Any]:
    now = int(clock.now)
    claims = {
        "iss": "gateway",
        "aud": "gateway",
        "sub": "u",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j",
        "scope": "me:read",
        "act": {"sub": f"api_key:{KEY_ID}"},
    }
    claims.update(changes)
    return claims


def test_forgeries_are_rejected(signer: Signer, clock: Clock) -> None:
    ours = _key()  # same kid, different key material
    real = signer.mint("u", KEY_ID, ["me:read"], 60)
    head, payload, signature = real.split(".")
    public_pem = signer._active.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tampered_payload = _b64({**_claims(clock), "scope": "projects:admin"})
    forgeries = {
        "alg none": _b64({"alg": "none", "kid": "k1", "typ": "JWT"}) + "." + payload + ".",
        "hs256 with our public key": "{}.{}.{}".format(
            _b64({"alg": "HS256", "kid": "k1", "typ": "JWT"}),
            payload,
            base64.urlsafe_b64encode(
                __import__("hmac")
                .new(
                    public_pem,
                    f"{_b64({'alg': 'HS256', 'kid': 'k1', 'typ': 'JWT'})}.{payload}".encode(),
                    "sha256",
                )
                .digest()
            )
            .rstrip(b"=")
            .decode(),
        ),
        "other key, our kid": _forge(
            signer, {"kid": "k1", "typ": "JWT"}, _claims(clock), ours.private_key, "EdDSA"
        ),
        "unknown kid": _forge(
            signer, {"kid": "k9", "typ": "JWT"}, _claims(clock), ours.private_key, "EdDSA"
        ),
        "jku header": _forge(
            signer,
            {"kid": "k1", "typ": "JWT", "jku": "http://127.0.0.1/jwks"},
            _claims(clock),
            signer._active.private_key,
            "EdDSA",
        ),
        "jwk header": _forge(
            signer,
            {"kid": "k1", "typ": "JWT", "jwk": {"kty": "OKP"}},
            _claims(clock),
            signer._active.private_key,
            "EdDSA",
        ),
        "x5u header": _forge(
            signer,
            {"kid": "k1", "typ": "JWT", "x5u": "http://127.0.0.1/x"},
            _claims(clock),
            signer._active.private_key,
            "EdDSA",
        ),
        "crit header": _forge(
            signer,
            {"kid": "k1", "typ": "JWT", "crit": ["exp"]},
            _claims(clock),
            signer._active.private_key,
            "EdDSA",
        ),
        "wrong typ": _forge(
            signer,
            {"kid": "k1", "typ": "at+jwt"},
            _claims(clock),
            signer._active.private_key,
            "EdDSA",
        ),
        "tampered payload": f"{head}.{tampered_payload}.{signature}",
        "wrong aud": _forge(
            signer,
            {"kid": "k1", "typ": "JWT"},
            _claims(clock, aud="other"),
            signer._active.private_key,
            "EdDSA",
        ),
        "iss prefix": _forge(
            signer,
            {"kid": "k1", "typ": "JWT"},
            _claims(clock, iss="gateway-evil"),
            signer._active.private_key,
            "EdDSA",
        ),
        "no act": _forge(
            signer,
            {"kid": "k1", "typ": "JWT"},
            {k: v for k, v in _claims(clock).items() if k != "act"},
            signer._active.private_key,
            "EdDSA",
        ),
        "act not a key": _forge(
            signer,
            {"kid": "k1", "typ": "JWT"},
            _claims(clock, act={"sub": "user:x"}),
            signer._active.private_key,
            "EdDSA",
        ),
        "garbage": "a.b.c",
    }
    for name, token in forgeries.items():
        with pytest.raises(TokenRejected):
            signer.verify(token)
            pytest.fail(name)


@given(st.lists(st.sampled_from(["me:read", "projects:read", "projects:write", "x"]), max_size=4))
def test_scope_claim_round_trips_exactly(scopes: list[str]) -> None:
    signer = Signer([_key()], Tokens(), clock=Clock())
    assert signer.verify(signer.mint("u", KEY_ID, scopes, 60)).scopes == set(scopes)


def test_concurrent_dev_key_creation_yields_one_shared_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gateway.tokens.signing import dev_key

    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: dev_key(tmp_path), range(16)))
    assert len({key.jwk()["x"] for key in loaded}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["dev-signing-key.pem"]
