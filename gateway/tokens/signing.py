"""Signing keys: Ed25519, EC P-256 or RSA PEM files, or a generated development key.

The first configured key signs; every configured key is published in the JWKS so
tokens signed before a key rotation still verify.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

log = logging.getLogger("gateway.tokens")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    private_key: PrivateKey

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, Any]:
        algorithm = get_default_algorithms()[self.alg]
        jwk: dict[str, Any] = algorithm.to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def algorithm_for(key: PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "RS256"
    raise ValueError("signing keys must be Ed25519, EC P-256 or RSA of at least 2048 bits")


def load_key(kid: str, path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, PrivateKey):
        raise ValueError("signing keys must be Ed25519, EC P-256 or RSA of at least 2048 bits")
    return SigningKey(kid, algorithm_for(key), key)


def generate_pem(alg: str) -> bytes:
    key: PrivateKey
    if alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unsupported algorithm {alg!r}; use EdDSA, ES256 or RS256")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def dev_key(state_dir: Path) -> SigningKey:
    """The generated development key, created on first use under the state directory."""
    path = state_dir / "dev-signing-key.pem"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        # Workers start together and must share one key: write it whole under a
        # private name, then link it into place; whoever links second uses the first's.
        fd, temporary = tempfile.mkstemp(dir=state_dir, prefix=".dev-key-")
        try:
            os.write(fd, generate_pem("EdDSA"))
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    log.warning("no tokens.signing_keys configured: using the development key %s", path)
    return load_key("dev", path)
