"""Leaked-key reports (§17) as GitHub's secret scanning sends them: signed with a real
ECDSA P-256 key made here, its public half served as GitHub serves it (a file, or a
URL on loopback)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.keys import format as key_format
from gateway.leaks.signatures import BadSignature, GithubKeys
from tests.e2e.test_audit import admin, events
from tests.e2e.test_webhooks import FAST, Receiver, receiver  # noqa: F401
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    running_gateway,
    unique,
)

PATH = "/leaks/github"


class GithubSigner:
    def __init__(self, identifier: str) -> None:
        self.identifier = identifier
        self.key = ec.generate_private_key(ec.SECP256R1())

    def public(self) -> dict[str, Any]:
        pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"key_identifier": self.identifier, "key": pem.decode(), "is_current": True}

    def headers(self, body: bytes) -> dict[str, str]:
        signature = self.key.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": self.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }


def report(*tokens: str) -> bytes:
    return json.dumps([
        {"token": t, "type": "gateway_api_key", "url": "https://github.com/o/r/blob/x/.env",
         "source": "content"}
        for t in tokens
    ]).encode()  # fmt: skip


@pytest.fixture
def github() -> GithubSigner:
    return GithubSigner("test-key-1")


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, github: GithubSigner
) -> AsyncIterator[RunningGateway]:
    keys_file = tmp_path / "github-keys.json"
    keys_file.write_text(json.dumps({"public_keys": [github.public()]}))
    config = make_config(tmp_path, database_url, upstream.url, webhooks=FAST,
                         leak_reports={"enabled": True, "github_public_keys_file": str(keys_file)})  # fmt: skip
    async with running_gateway(config) as running:
        yield running
        async with running.pool.acquire() as conn:
            await conn.execute("DELETE FROM webhook_endpoints")


async def _post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def _works(http: aiohttp.ClientSession, proxy: str, key: str) -> bool:
    async with http.get(proxy + "/v1/me", headers=bearer(key)) as response:
        return response.status == 200


async def test_reported_keys_are_revoked_everywhere_audited_and_announced(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    gateway: RunningGateway,
    github: GithubSigner,
    receiver: Receiver,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    status, hook, _ = await admin(http, gateway, "POST", "/admin/v1/webhooks",
                                  {"url": receiver.url, "events": ["key.leaked"]})  # fmt: skip
    live = await gateway.create_key(unique("leak"), ["me:read"])
    gone = await gateway.create_key(unique("leak"), ["me:read"])
    await admin(http, gateway, "DELETE", f"/admin/v1/keys/{gone['id']}")
    stranger = key_format.generate(gateway.config.keys.prefix)  # well-formed, not ours
    # Every host delivers webhooks: all of them allow the receiver (as one config would).
    other = make_config(tmp_path / "b", database_url, upstream.url, webhooks=FAST)
    async with running_gateway(other) as elsewhere:
        assert await _works(http, elsewhere.proxy, live["key"])  # cached there too
        body = report(live["key"], gone["key"], stranger, "ghp_notours")
        status, answer = await _post(http, gateway.proxy + PATH, body, github.headers(body))
        assert status == 200
        assert answer == [
            {"token_hash": hashlib.sha256(t.encode()).hexdigest(), "token_type": "gateway_api_key",
             "label": label}
            for t, label in ((live["key"], "true_positive"), (gone["key"], "true_positive"),
                             (stranger, "false_positive"), ("ghp_notours", "false_positive"))
        ]  # fmt: skip
        for _ in range(40):  # on the other process within a second
            if not await _works(http, elsewhere.proxy, live["key"]):
                break
            await asyncio.sleep(0.025)
        else:
            pytest.fail("the leaked key still works elsewhere")
    found = await events(http, gateway, key_id=live["id"], action="key.revoked")
    assert found[0]["actor"] == "leak:github"
    assert found[0]["details"]["url"] == "https://github.com/o/r/blob/x/.env"
    deadline = asyncio.get_running_loop().time() + 5
    while len(receiver.seen) < 1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    # The report replayed (GitHub signs only the body) and sent again: the keys are
    # still ours, and nothing is written or announced a second time.
    for _ in range(3):
        status, again = await _post(http, gateway.proxy + PATH, body, github.headers(body))
        assert status == 200 and again == answer
    await asyncio.sleep(1.0)  # ten delivery polls
    leaked = [e["data"]["key_id"] for e in receiver.events(hook["secret"])]
    assert leaked == [live["id"]]  # the key revoked before the report is not "leaked"
    assert len(await events(http, gateway, key_id=live["id"], action="key.revoked")) == 1
    assert live["key"] not in json.dumps([b.decode() for _, b in receiver.seen])


async def test_unsigned_or_missigned_reports_revoke_nothing(
    gateway: RunningGateway, github: GithubSigner, http: aiohttp.ClientSession
) -> None:
    key = await gateway.create_key(unique("leak"), ["me:read"])
    body = report(key["key"])
    forged = GithubSigner(github.identifier)  # the right name, another key
    stranger = GithubSigner("nobody-knows")
    cases = [
        ({"Content-Type": "application/json"}, body),
        (forged.headers(body), body),
        (stranger.headers(body), body),
        (github.headers(b"[]"), body),  # a signature over another body
        (github.headers(b"not json"), b"not json"),  # signed, but not a report
        (github.headers(b"{}"), b"{}"),
    ]
    for headers, sent in cases:
        status, problem = await _post(http, gateway.proxy + PATH, sent, headers)
        assert status == 400 and problem["type"].endswith(":bad-leak-report"), problem
        assert key["key"] not in json.dumps(problem)
    assert await _works(http, gateway.proxy, key["key"])
    async with http.get(gateway.proxy + PATH) as response:
        assert response.status == 405


async def test_keys_are_fetched_from_the_url_and_refetched_for_a_new_identifier(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    first, second = GithubSigner("k1"), GithubSigner("k2")
    published = {"public_keys": [first.public()]}
    fetches = 0

    async def serve_keys(_request: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        return web.json_response(published)

    app = web.Application()
    app.router.add_get("/meta/public_keys/secret_scanning", serve_keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/meta/public_keys/secret_scanning"
    config = make_config(tmp_path, database_url, upstream.url,
                         leak_reports={"enabled": True, "github_public_keys_url": url})  # fmt: skip
    try:
        async with running_gateway(config) as gateway:
            key = await gateway.create_key(unique("leak"), ["me:read"])
            harmless = report("ghp_notours")
            assert (await _post(http, gateway.proxy + PATH, harmless, first.headers(harmless)))[
                0
            ] == 200
            assert fetches == 1
            published["public_keys"].append(second.public())  # GitHub adds a key
            body = report(key["key"])
            for _ in range(3):  # unknown for now: refetched at most once a minute
                assert (await _post(http, gateway.proxy + PATH, body, second.headers(body)))[
                    0
                ] == 400
            assert fetches == 1 and await _works(http, gateway.proxy, key["key"])
        # The minute, on a clock of our own (the only thing not real here).
        now = [0.0]
        third = GithubSigner("k3")
        signed = third.headers(body)["Github-Public-Key-Signature"]
        async with aiohttp.ClientSession() as session:
            keys = GithubKeys(session, url, None, clock=lambda: now[0])
            await keys.verify(body, "k2", second.headers(body)["Github-Public-Key-Signature"])
            published["public_keys"].append(third.public())
            now[0] += 30
            with pytest.raises(BadSignature):
                await keys.verify(body, "k3", signed)  # fetched 30 s ago: not again yet
            now[0] += 31
            await keys.verify(body, "k3", signed)
        assert fetches == 3
    finally:
        await runner.cleanup()
