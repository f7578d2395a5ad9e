"""GitHub's signature on a report: ECDSA P-256 with SHA-256 over the raw body, by the
published key named in `Github-Public-Key-Identifier`.

The keys come from GitHub's URL (or the same JSON in a file, for hosts that cannot
reach GitHub); fetched keys are kept 30 minutes, and an identifier we do not know
makes us fetch again at most once a minute (GitHub rotates keys by adding one).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

log = logging.getLogger("gateway.leaks")
KEEP_SECONDS = 30 * 60
REFETCH_SECONDS = 60


class BadSignature(Exception):
    """Why a report is not believed (said in the 400)."""


def parse_keys(document: Any) -> dict[str, ec.EllipticCurvePublicKey]:
    """GitHub's `{"public_keys": [{"key_identifier", "key": PEM, ...}]}`."""
    found: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in document.get("public_keys", []) if isinstance(document, dict) else []:
        try:
            key = load_pem_public_key(str(entry["key"]).encode())
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            found[str(entry.get("key_identifier"))] = key
    return found


class GithubKeys:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        file: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._url = url
        self._file = file
        self._clock = clock
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float = -KEEP_SECONDS - REFETCH_SECONDS

    async def verify(self, body: bytes, identifier: str | None, signature: str | None) -> None:
        """Raise `BadSignature` unless GitHub's key `identifier` signed `body`."""
        if not identifier or not signature:
            raise BadSignature(
                "missing Github-Public-Key-Identifier or Github-Public-Key-Signature"
            )
        key = await self._key(identifier)
        try:
            raw = base64.b64decode(signature, validate=True)
            key.verify(raw, body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            raise BadSignature("the signature does not match the body") from None

    async def _key(self, identifier: str) -> ec.EllipticCurvePublicKey:
        age = self._clock() - self._fetched_at
        if age > KEEP_SECONDS or (identifier not in self._keys and age > REFETCH_SECONDS):
            await self._refresh()
        key = self._keys.get(identifier)
        if key is None:
            raise BadSignature("unknown Github-Public-Key-Identifier")
        return key

    async def _refresh(self) -> None:
        self._fetched_at = self._clock()
        try:
            if self._file is not None:
                document = json.loads(self._file.read_text())
            else:
                async with self._http.get(
                    self._url, timeout=aiohttp.ClientTimeout(total=10)
                ) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
            # Keep what we had: GitHub retries a report we could not check.
            log.warning("leak reports: cannot load GitHub's public keys: %s", exc)
            return
        keys = parse_keys(document)
        if keys:
            self._keys = keys
