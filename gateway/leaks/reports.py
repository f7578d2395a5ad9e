"""`POST <leak_reports.path>`: GitHub reports tokens it found in public code (§17).

Believed only with GitHub's signature over the raw body; then every reported token
that is a live key of ours is revoked at once (every process within a second, by
the same NOTIFY as any revocation), audited as `key.revoked` by `leak:github` with
where it was found, and announced by the webhook `key.leaked`. The answer labels
each token by its SHA-256, never echoing the token itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import asyncpg

from gateway.foundation.jsonbody import json_reply
from gateway.foundation.problems import Problem
from gateway.http1.messages import OwnedRequest, Reply
from gateway.keys import format as key_format
from gateway.keys import management
from gateway.leaks.signatures import BadSignature, GithubKeys

MAX_BYTES = 1024 * 1024
MAX_ENTRIES = 1000


def _bad(detail: str) -> Problem:
    return Problem(400, "bad-leak-report", detail)


def parse_report(body: bytes) -> list[dict[str, str]]:
    """A JSON array of `{token, type, url, source}`; 400 for anything else."""
    try:
        found: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise _bad("the body is not JSON") from None
    if not isinstance(found, list) or not 1 <= len(found) <= MAX_ENTRIES:
        raise _bad(f"expected a JSON array of 1 to {MAX_ENTRIES} reports")
    entries = []
    for index, entry in enumerate(found):
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise _bad(f"report {index}: expected an object with a string `token`")
        entries.append(
            {name: str(entry.get(name) or "") for name in ("token", "type", "url", "source")}
        )
    return entries


class LeakReports:
    def __init__(self, path: str, keys: GithubKeys, pool: asyncpg.Pool, prefix: str) -> None:
        self.path = path
        self._keys = keys
        self._pool = pool
        self._prefix = prefix

    async def handle(self, request: OwnedRequest) -> Reply:
        if request.method != "POST":
            raise Problem(405, "method-not-allowed", "use POST", headers={"Allow": "POST"})
        body = await request.read_body(MAX_BYTES)
        try:
            await self._keys.verify(
                body,
                request.headers.get("Github-Public-Key-Identifier"),
                request.headers.get("Github-Public-Key-Signature"),
            )
        except BadSignature as exc:
            raise _bad(f"not signed by GitHub: {exc}") from None
        answers = []
        async with self._pool.acquire() as conn:
            for entry in parse_report(body):
                token = entry["token"]
                digest = hashlib.sha256(token.encode()).digest()
                ours = key_format.is_well_formed(
                    token, self._prefix
                ) and await management.revoke_leaked(conn, digest, entry["url"], entry["source"])
                answers.append(
                    {
                        "token_hash": digest.hex(),
                        "token_type": entry["type"],
                        "label": "true_positive" if ours else "false_positive",
                    }
                )
        return json_reply(answers)
