"""Webhooks (§17) against a real receiver on loopback: every delivery checked with the
`standardwebhooks` reference library, retries with the same id, secret rotation, the
outbox written with its cause, the time-driven scan once across processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from gateway.testing import free_port
from gateway.webhooks.scan import scan
from tests.e2e.test_audit import admin
from tests.e2e.test_processes import _ready, _serve, _write_config, spawn  # noqa: F401
from tests.support import RunningGateway, admin_headers, make_config, running_gateway, unique

# The receivers are on loopback, which is only a destination when allowed.
FAST = {"timeout_seconds": 1, "retry_schedule_seconds": [0.2, 0.2], "poll_seconds": 0.1,
        "scan_interval_seconds": 3600, "allowed_networks": ["127.0.0.0/8", "::1/128"]}  # fmt: skip


@dataclass
class Receiver:
    """Answers each delivery with the next status of `answers` (then 204)."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hang: asyncio.Event | None = None  # given: the next delivery hangs, and it is set
    released: asyncio.Event = field(default_factory=asyncio.Event)  # a hang ends (teardown)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.hang is not None and not self.hang.is_set():
            self.hang.set()
            # Held for the test; released at teardown, which otherwise waits for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 60)
        return web.Response(status=self.answers.pop(0) if self.answers else 204)

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Every delivery, verified with the reference library (raises if one is not)."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.seen]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    found.url = f"http://{host}:{port}/hook"
    yield found
    found.released.set()
    await runner.cleanup()


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: Any
) -> AsyncIterator[RunningGateway]:
    config = make_config(tmp_path, database_url, upstream.url, webhooks=FAST)
    async with running_gateway(config) as running:
        yield running
        async with running.pool.acquire() as conn:  # no endpoint outlives its test
            await conn.execute("DELETE FROM webhook_endpoints")


async def _endpoint(
    http: aiohttp.ClientSession, gateway: RunningGateway, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "description": "billing"}
    if events is not None:
        body["events"] = events
    status, made, _ = await admin(http, gateway, "POST", "/admin/v1/webhooks", body)
    assert status == 201, made
    return dict(made)


async def _until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within time"
        await asyncio.sleep(0.05)


async def _eventually(read: Callable[[], Awaitable[Any]], want: Any, seconds: float = 5.0) -> None:
    """The receiver answers before the dispatcher records the outcome: poll the record."""
    deadline = time.monotonic() + seconds
    while (found := await read()) != want:
        assert time.monotonic() < deadline, f"still {found!r}"
        await asyncio.sleep(0.05)


async def test_a_key_change_is_delivered_signed_and_without_secrets(
    gateway: RunningGateway, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    hook = await _endpoint(http, gateway, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["*"]
    status, listed, _ = await admin(http, gateway, "GET", "/admin/v1/webhooks")
    assert status == 200 and hook["secret"] not in json.dumps(listed)
    user = unique("wh")
    status, key, rid = await admin(http, gateway, "POST", "/admin/v1/keys",
                                   {"user_id": user, "name": "k", "scopes": ["me:read"]})  # fmt: skip
    await _until(lambda: len(receiver.seen) == 1)
    event = receiver.events(hook["secret"])[0]
    assert event["type"] == "key.created"
    data = event["data"]
    assert (data["key_id"], data["user_id"], data["actor"], data["request_id"]) == (
        key["id"], user, "admin", rid)  # fmt: skip
    assert data["display_prefix"] == key["display_prefix"] and data["scopes"] == ["me:read"]
    raw = receiver.seen[0][1].decode()
    assert key["key"] not in raw and "key_hash" not in raw
    headers = receiver.seen[0][0]
    assert (
        headers["webhook-id"].startswith("msg_") and headers["content-type"] == "application/json"
    )

    async def deliveries() -> list[tuple[str, str, int]]:
        path = f"/admin/v1/webhooks/{hook['id']}/deliveries"
        shown = (await admin(http, gateway, "GET", path))[1]
        return [(d["type"], d["status"], d["attempts"]) for d in shown["deliveries"]]

    await _eventually(deliveries, [("key.created", "delivered", 1)])


async def test_failures_are_retried_with_the_same_id_then_failed_then_retried_by_hand(
    gateway: RunningGateway, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    hook = await _endpoint(http, gateway, receiver.url, ["key.revoked"])
    key = await gateway.create_key(unique("wh"), ["me:read"])  # not subscribed: nothing sent
    receiver.answers = [500, 503]
    await admin(http, gateway, "DELETE", f"/admin/v1/keys/{key['id']}")
    await _until(lambda: len(receiver.seen) == 3)  # two failures, then the 204
    ids = {headers["webhook-id"] for headers, _ in receiver.seen}
    assert len(ids) == 1 and {e["type"] for e in receiver.events(hook["secret"])} == {"key.revoked"}
    receiver.answers = [500, 500, 500]  # more than the schedule allows
    other = await gateway.create_key(unique("wh"), ["me:read"])
    await admin(http, gateway, "DELETE", f"/admin/v1/keys/{other['id']}")
    path = f"/admin/v1/webhooks/{hook['id']}/deliveries"

    async def newest() -> dict[str, Any]:
        return dict((await admin(http, gateway, "GET", path))[1]["deliveries"][0])

    deadline = time.monotonic() + 5
    while (latest := await newest())["status"] != "failed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert latest["attempts"] == 3 and latest["last_status"] == 500
    status, again, _ = await admin(http, gateway, "POST",
                                   f"/admin/v1/webhook-deliveries/{latest['id']}/retry")  # fmt: skip
    assert status == 202 and again["status"] == "pending"
    await _until(lambda: len(receiver.seen) == 7)

    async def newest_status() -> str:
        return str((await newest())["status"])

    await _eventually(newest_status, "delivered")
    async with http.get(gateway.admin + "/metrics") as response:
        metrics = await response.text()
    assert 'gateway_webhook_deliveries_total{outcome="failed"} 1.0' in metrics


async def test_a_rotated_secret_signs_beside_the_old_one(
    gateway: RunningGateway, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    hook = await _endpoint(http, gateway, receiver.url, ["key.created"])
    status, rotated, _ = await admin(
        http, gateway, "POST", f"/admin/v1/webhooks/{hook['id']}/rotate-secret"
    )
    assert status == 200 and rotated["secret"] != hook["secret"]
    until = datetime.fromisoformat(rotated["previous_secret_until"])
    assert timedelta(hours=23) < until - datetime.now(UTC) <= timedelta(hours=24)
    await gateway.create_key(unique("wh"), ["me:read"])
    await _until(lambda: len(receiver.seen) == 1)
    assert receiver.seen[0][0]["webhook-signature"].count("v1,") == 2
    for secret in (hook["secret"], rotated["secret"]):  # receivers on either verify
        assert receiver.events(secret)[0]["type"] == "key.created"


async def test_bad_endpoints_are_refused_naming_the_field(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    for body, field_name in (
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "https://example.com", "events": ["key.nope"]}, "events[0]"),
        ({"url": "https://example.com", "events": []}, "events"),
        ({"url": "https://example.com", "secret": "mine"}, "secret"),
    ):
        status, problem, _ = await admin(http, gateway, "POST", "/admin/v1/webhooks", body)
        assert status == 422 and problem["errors"][0]["field"] == field_name, problem
    unknown = "00000000-0000-0000-0000-000000000000"
    for method, path in (("GET", f"/admin/v1/webhooks/{unknown}"),
                         ("DELETE", f"/admin/v1/webhooks/{unknown}"),
                         ("POST", f"/admin/v1/webhook-deliveries/{unknown}/retry")):  # fmt: skip
        assert (await admin(http, gateway, method, path))[0] == 404


async def test_internal_destinations_are_refused_at_registration(
    tmp_path: Path, database_url: str, upstream: Any, http: aiohttp.ClientSession
) -> None:
    """Without `allowed_networks`: the cloud metadata address, the admin port, the
    database port, and every other spelling of an internal address."""
    config = make_config(
        tmp_path, database_url, upstream.url, webhooks={**FAST, "allowed_networks": []}
    )
    async with running_gateway(config) as gateway:
        admin_port = gateway.admin.rsplit(":", 1)[1]
        targets = [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            f"http://127.0.0.1:{admin_port}/admin/v1/keys",
            "http://127.0.0.1:5432/",
            "http://localhost:6379/",
            "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/",
            "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[64:ff9b::a9fe:a9fe]/",
            "http://10.0.0.8/", "http://100.64.0.1/", "http://224.0.0.1/", "http://[fe80::1]/",
            "https://user:pw@192.168.0.1/",
        ]  # fmt: skip
        for url in targets:
            status, problem, _ = await admin(
                http, gateway, "POST", "/admin/v1/webhooks", {"url": url}
            )
            assert status == 422, (url, problem)
            assert problem["type"].endswith(":webhook-destination-not-allowed"), problem
            assert "pw" not in json.dumps(problem)
        assert (await admin(http, gateway, "GET", "/admin/v1/webhooks"))[1]["webhooks"] == []


async def test_each_delivery_checks_the_address_it_connects_to(
    tmp_path: Path,
    database_url: str,
    upstream: Any,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    """Registered while loopback was allowed (by literal and by name), delivered by a
    gateway that no longer allows it: refused as `destination-not-allowed`, at once and
    for good, and nothing reaches the receiver. A refused port says only
    `connection-refused`, never a library's text."""
    allowing = make_config(tmp_path / "a", database_url, upstream.url, webhooks=FAST)
    async with running_gateway(allowing) as gateway:
        by_name = receiver.url.replace("127.0.0.1", "localhost")
        hooks = [await _endpoint(http, gateway, url, ["key.created"])
                 for url in (receiver.url, by_name)]  # fmt: skip
    strict = {**FAST, "allowed_networks": []}
    config = make_config(tmp_path / "b", database_url, upstream.url, webhooks=strict)
    async with running_gateway(config) as gateway:
        await gateway.create_key(unique("ssrf"), ["me:read"])
        for hook in hooks:
            path = f"/admin/v1/webhooks/{hook['id']}/deliveries"

            async def outcome(path: str = path) -> tuple[str, str | None, int | None]:
                found = (await admin(http, gateway, "GET", path))[1]["deliveries"]
                return (
                    (found[0]["status"], found[0]["last_error"], found[0]["last_status"])
                    if found
                    else ("", None, None)
                )

            await _eventually(outcome, ("failed", "destination-not-allowed", None))
        assert receiver.seen == []
        async with gateway.pool.acquire() as conn:
            await conn.execute("DELETE FROM webhook_endpoints")


async def test_an_outcome_is_a_status_or_a_fixed_word(
    gateway: RunningGateway, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Nothing listening: `connection-refused`, never the client library's text."""
    hook = await _endpoint(http, gateway, f"http://127.0.0.1:{free_port()}/hook", ["key.created"])
    await gateway.create_key(unique("gone"), ["me:read"])
    path = f"/admin/v1/webhooks/{hook['id']}/deliveries"

    async def last_error() -> str | None:
        found = (await admin(http, gateway, "GET", path))[1]["deliveries"]
        return found[0]["last_error"] if found and found[0]["attempts"] else None

    await _eventually(last_error, "connection-refused")


async def test_userinfo_in_a_webhook_url_is_never_shown_back(
    gateway: RunningGateway, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    url = receiver.url.replace("http://", "http://hookuser:hookpass@")
    hook = await _endpoint(http, gateway, url)
    assert hook["url"] == receiver.url.replace("http://", "http://***@")
    listed = (await admin(http, gateway, "GET", "/admin/v1/webhooks"))[1]
    assert "hookpass" not in json.dumps(listed) and "hookpass" not in json.dumps(hook)
    async with gateway.pool.acquire() as conn:
        audit = await conn.fetch(
            "SELECT details::text FROM audit_events WHERE action = 'webhook.created'"
        )
    assert audit and all("hookpass" not in row[0] for row in audit)


async def test_time_driven_events_come_once_whoever_scans(
    tmp_path: Path,
    database_url: str,
    upstream: Any,
    gateway: RunningGateway,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    stack = contextlib.AsyncExitStack()
    try:
        hook = await _endpoint(http, gateway, receiver.url, ["key.expiring", "key.expired",
                                                             "key.credits_low", "key.credits_exhausted"])  # fmt: skip
        soon = await gateway.create_key(unique("wh"), ["me:read"], expires_in_days=3)
        paid = await gateway.create_key(unique("wh"), ["me:read"], credits={"remaining": 100})

        (tmp_path / "other").mkdir()
        other_config = make_config(tmp_path / "other", database_url, upstream.url, webhooks=FAST)
        other = await stack.enter_async_context(running_gateway(other_config))

        async def scan_from_many() -> int:
            """Both gateways (two processes' worth) scanning at once, twice each."""

            async def one(running: RunningGateway) -> int:
                async with running.pool.acquire() as conn:
                    return await scan(conn)

            rounds = [one(running) for running in (gateway, other, gateway, other)]
            return sum(await asyncio.gather(*rounds))

        async with gateway.pool.acquire() as conn:
            await conn.execute(
                "UPDATE api_keys SET credits_remaining = 9 WHERE id = $1::uuid", paid["id"]
            )
        await scan_from_many()
        assert await scan_from_many() == 0  # each once
        await _until(lambda: len(receiver.seen) == 2)
        events = {e["type"]: e["data"] for e in receiver.events(hook["secret"])}
        assert (
            events["key.expiring"]["days_left"] == 7
            and events["key.expiring"]["key_id"] == soon["id"]
        )
        assert events["key.credits_low"]["remaining"] == 9
        async with gateway.pool.acquire() as conn:
            await conn.execute(
                "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid",
                soon["id"],
            )
            await conn.execute(
                "UPDATE api_keys SET credits_remaining = 0 WHERE id = $1::uuid", paid["id"]
            )
        await scan_from_many()
        await _until(lambda: len(receiver.seen) == 4)
        # Two gateways deliver side by side: events arrive in no promised order.
        later = sorted(e["type"] for e in receiver.events(hook["secret"])[2:])
        assert later == ["key.credits_exhausted", "key.expired"]
    finally:
        await stack.aclose()


async def test_events_wait_in_the_outbox_while_no_gateway_runs(
    tmp_path: Path,
    database_url: str,
    upstream: Any,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    config = make_config(tmp_path, database_url, upstream.url, webhooks=FAST)
    async with running_gateway(config) as first:
        hook = await _endpoint(http, first, receiver.url, ["key.created"])
        receiver.answers = [500]
        made = await first.create_key(unique("wh"), ["me:read"])
        await _until(lambda: len(receiver.seen) == 1)
    # Stopped: the event made before and one made meanwhile wait in PostgreSQL.
    async with running_gateway(config) as second:
        await second.create_key(unique("wh"), ["me:read"])  # (made while starting: fine)
        await _until(lambda: len(receiver.seen) == 3)
        async with second.pool.acquire() as conn:
            await conn.execute("DELETE FROM webhook_endpoints")
    ids = [e["data"]["key_id"] for e in receiver.events(hook["secret"])]
    assert ids[0] == made["id"] and ids.count(made["id"]) == 2 and len(set(ids)) == 2


async def test_a_delivering_process_killed_mid_attempt_loses_nothing(
    tmp_path: Path,
    database_url: str,
    upstream: Any,
    receiver: Receiver,
    spawn: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    """Process one takes the delivery and dies with SIGKILL while the receiver holds
    it; process two, started afterwards, delivers it (same webhook-id) once the
    attempt's lease runs out (2 x 1 s timeout + 5 s here)."""
    one, _, a1 = _write_config(tmp_path, "one", database_url, upstream.url, webhooks=FAST)
    two, _, a2 = _write_config(tmp_path, "two", database_url, upstream.url, webhooks=FAST)
    spawn.append(_serve(one, tmp_path))
    receiver.hang = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        await _ready(a1)
        async with http.post(f"http://127.0.0.1:{a1}/admin/v1/webhooks", headers=admin_headers(),
                             json={"url": receiver.url, "events": ["key.created"]}) as r:  # fmt: skip
            hook = await r.json()
        body = {"user_id": unique("kill"), "name": "k", "scopes": ["me:read"]}
        async with http.post(f"http://127.0.0.1:{a1}/admin/v1/keys", json=body,
                             headers=admin_headers()) as r:  # fmt: skip
            key = await r.json()
        await asyncio.wait_for(receiver.hang.wait(), 5)
        spawn[0].send_signal(signal.SIGKILL)
        spawn[0].wait(5)
        killed = time.monotonic()
        spawn.append(_serve(two, tmp_path))
        await _ready(a2)
        await _until(lambda: len(receiver.seen) == 2, seconds=15)
        took = time.monotonic() - killed
        async with http.delete(f"http://127.0.0.1:{a2}/admin/v1/webhooks/{hook['id']}",
                               headers=admin_headers()) as r:  # fmt: skip
            assert r.status == 204
    first, second = receiver.seen
    assert first[0]["webhook-id"] == second[0]["webhook-id"]
    assert receiver.events(hook["secret"])[1]["data"]["key_id"] == key["id"]
    print(f"\nthe killed process's delivery was made by the other {took:.1f} s after the kill")
