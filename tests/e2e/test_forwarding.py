"""Step 6: streaming, header hygiene, upstream failures, CORS and the access log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.rawhttp import exchange, port_of
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    routes_dir,
    running_gateway,
    unique,
)

FIVE_MIB = 5 * 1024 * 1024


async def _writer_key(gateway: RunningGateway) -> str:
    user = unique("user")
    await gateway.member(user, "organization", "acme")
    return str((await gateway.create_key(user, ["projects:write"]))["key"])


async def test_five_mib_streams_both_ways(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    policies = routes_dir(
        tmp_path,
        "upstream: core\nroutes:\n"
        "  - {methods: [POST], path: '/echo-body/{org_id}', scopes: [projects:write],"
        " member_of: {organization: org_id}}\n"
        "  - {methods: [GET], path: '/big/{size}', public: true}\n",
    )
    config = make_config(tmp_path, database_url, upstream.url, policies=policies)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        key = await _writer_key(gateway)
        payload = bytes(range(256)) * (FIVE_MIB // 256)
        async with http.post(
            gateway.proxy + "/echo-body/acme", data=io.BytesIO(payload), headers=bearer(key)
        ) as response:
            assert response.status == 200
            assert await response.read() == payload
        async with http.get(gateway.proxy + f"/big/{FIVE_MIB}") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(FIVE_MIB)
            assert len(await response.read()) == FIVE_MIB
        assert upstream.received[0].body == payload


async def test_hop_by_hop_override_and_spoofed_headers_never_reach_upstream(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
    headers = {
        **bearer(key),
        "Connection": "keep-alive, X-Gateway-User-Id, X-Custom-Drop",
        "X-Custom-Drop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic eA==",
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
        "x-gateway-user-id": "root",
        "X-GATEWAY-SCOPES": "projects:admin",
        "X-Gateway-Anything": "1",
        "X-Forwarded-For": "10.9.9.9",
        "Forwarded": "for=10.9.9.9",
        "X-Keep-Me": "yes",
    }
    async with http.get(gateway.proxy + "/v1/me", headers=headers) as response:
        assert response.status == 200
    [seen] = upstream.received
    for name in (
        "X-Custom-Drop",
        "Keep-Alive",
        "TE",
        "Proxy-Authorization",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Gateway-Anything",
        "Forwarded",
    ):
        assert name not in seen.headers, name
    assert seen.headers.getall("X-Gateway-User-Id") != ["root"]
    assert seen.headers["X-Gateway-Scopes"] == "me:read"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Keep-Me"] == "yes"
    assert seen.method == "GET"


async def test_connection_header_cannot_drop_identity_headers(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    key = (await gateway.create_key(user, ["me:read"]))["key"]
    headers = {**bearer(key), "Connection": "X-Gateway-User-Id, X-Gateway-Scopes, X-Request-Id"}
    async with http.get(gateway.proxy + "/v1/me", headers=headers) as response:
        assert response.status == 200
    seen = upstream.received[0].headers
    assert seen["X-Gateway-User-Id"] == user
    assert seen["X-Gateway-Scopes"] == "me:read"
    assert seen["X-Request-Id"]


async def test_response_hop_by_hop_headers_are_removed(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    policies = routes_dir(
        tmp_path,
        "upstream: core\nroutes:\n  - {methods: [GET], path: /hop, public: true}\n",
    )
    config = make_config(tmp_path, database_url, upstream.url, policies=policies)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        async with http.get(gateway.proxy + "/hop") as response:
            assert response.status == 200
            assert "X-Secret-Hop" not in response.headers
            assert response.headers["Set-Cookie"] == "upstream=1"


@pytest.mark.parametrize(
    ("path", "status", "max_seconds"), [("/stall", 504, 3.5), ("/reset", 502, 1.5)]
)
async def test_upstream_failures_are_502_or_504(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    path: str,
    status: int,
    max_seconds: float,
) -> None:
    policies = routes_dir(
        tmp_path,
        f"upstream: core\nroutes:\n  - {{methods: [POST], path: {path}, public: true}}\n",
    )
    config = make_config(tmp_path, database_url, upstream.url, policies=policies)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(gateway.proxy + path, data=b"once") as response:
            assert response.status == status
            assert response.content_type == "application/problem+json"
        elapsed = time.monotonic() - started
    assert elapsed <= max_seconds
    if status == 504:
        assert elapsed >= 2 * 0.9  # timeout_seconds is 2 in tests
    assert upstream.count(path) == 1  # a POST is sent exactly once


async def test_unreachable_upstream_is_502(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url, "http://127.0.0.1:9")
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        async with http.get(gateway.proxy + "/v1/public/x") as response:
            assert response.status == 502
            assert "upstream" in (await response.json(content_type=None))["detail"]


async def test_stall_mid_body_cuts_the_connection(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    policies = routes_dir(
        tmp_path,
        "upstream: core\nroutes:\n  - {methods: [GET], path: /slow-body, public: true}\n",
    )
    config = make_config(tmp_path, database_url, upstream.url, policies=policies)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(gateway.proxy + "/slow-body") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert time.monotonic() - started <= 3.5


async def test_cors_preflight_and_responses(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        cors={"allow_origins": ["null", "https://app.example"]},
    )
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        preflight = {"Origin": "null", "Access-Control-Request-Method": "DELETE"}
        async with http.options(gateway.proxy + "/v1/projects/p1", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "null"
            assert response.headers["Access-Control-Allow-Methods"] == "DELETE"
            assert "X-API-Key" in response.headers["Access-Control-Allow-Headers"]
            assert response.headers["Access-Control-Max-Age"] == "600"
            assert "Access-Control-Allow-Credentials" not in response.headers
        evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        async with http.options(gateway.proxy + "/nowhere", headers=evil) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
        async with http.get(
            gateway.proxy + "/v1/me", headers={"Origin": "https://app.example"}
        ) as r:
            assert r.status == 401
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "WWW-Authenticate" in r.headers["Access-Control-Expose-Headers"]
            assert r.headers["Vary"] == "Origin"
        async with http.get(
            gateway.proxy + "/v1/public/x", headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 200
            assert "Access-Control-Allow-Origin" not in r.headers
            assert r.headers["Vary"] == "Origin"
    assert [r.raw_path for r in upstream.received] == ["/v1/public/x"]


async def test_access_log_has_one_line_per_request_and_no_secret(
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = await gateway.create_key(unique("user"), ["me:read"])
    caplog.set_level(logging.DEBUG)
    for headers in (bearer(key["key"]), {"X-API-Key": key["key"] + "x"}, {}):
        async with http.get(gateway.proxy + "/v1/me", headers=headers) as response:
            await response.read()
    await asyncio.sleep(0.2)  # the access log is written in batches
    records = gateway.log_lines()
    assert len(records) == 3
    assert [r["status"] for r in records] == [200, 401, 401]
    assert records[0]["key_id"] == key["id"]
    assert records[0]["route"] == "me"
    assert records[0]["upstream"] == "core"
    assert records[0]["upstream_ms"] > 0
    for figure in ("duration_ms", "upstream_ms"):  # to the microsecond
        assert records[0][figure] == round(records[0][figure], 3)
    assert records[1]["reason"] == "malformed-credential"
    assert {"time", "request_id", "method", "path", "duration_ms", "user_id"} <= set(records[0])
    everything = gateway.access_log.getvalue().decode() + "\n".join(
        r.getMessage() for r in caplog.records
    )
    assert key["key"] not in everything
    assert key["key"][12:] not in everything


@pytest.mark.parametrize(
    "credential",
    [
        "gwk_" + "é" * 38,  # sent as UTF-8: not a key's alphabet
        "gwk_\udcff" + "a" * 37,  # not UTF-8 at all
        "gwk_" + "a" * 38,  # the right shape, a wrong checksum
    ],
)
async def test_a_credential_that_is_not_a_key_is_malformed_before_any_lookup(
    gateway: RunningGateway, upstream: RecordingUpstream, credential: str
) -> None:
    """A cached key is looked up before its format is checked (the cache only holds
    what passed that check): whatever bytes a credential is made of, a miss is still
    refused as malformed, without a query."""
    queries = gateway.store.queries
    raw = credential.encode("utf-8", "surrogateescape")
    request = b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n\r\n" % raw
    for _ in range(2):
        replies, _ = await exchange(port_of(gateway.proxy), request, expect=1)
        assert [reply.status for reply in replies] == [401]
        assert json.loads(replies[0].body)["type"] == "urn:gateway:problem:malformed-credential"
    assert gateway.store.queries == queries and upstream.received == []


async def test_bytes_that_are_not_a_request_are_refused_and_still_logged(
    gateway: RunningGateway,
) -> None:
    """Refused before there is a method or a path, by the reader: still one access-log
    line (method and path "-"), with the request id the answer gives."""
    replies, closed = await exchange(
        port_of(gateway.proxy),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        expect=1,
    )
    assert closed and [reply.status for reply in replies] == [400]
    answered = json.loads(replies[0].body)
    await asyncio.sleep(0.2)  # the access log is written in batches
    (record,) = gateway.log_lines()
    assert (record["method"], record["path"], record["status"]) == ("-", "-", 400)
    assert record["request_id"] == answered["request_id"]
    assert answered["type"] == f"urn:gateway:problem:{record['reason']}"
    assert record["client"] == "127.0.0.1" and record["endpoint"] == "proxy"


async def test_websocket_upgrade_is_authorised_then_relayed(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    policies = routes_dir(
        tmp_path,
        "upstream: core\nroutes:\n  - {methods: [GET], path: /ws, scopes: [me:read]}\n",
    )
    config = make_config(tmp_path, database_url, upstream.url, policies=policies)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(gateway.proxy + "/ws")
        assert refused.value.status == 401
        key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        async with http.ws_connect(
            gateway.proxy + "/ws", headers=bearer(key), protocols=("chat",)
        ) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=2) == "echo:hello"
            await ws.send_bytes(b"abc")
            assert await ws.receive_bytes(timeout=2) == b"cba"
    [seen] = upstream.received
    assert seen.headers["X-Gateway-Auth"] == "api_key"
    assert "Authorization" not in seen.headers


async def test_a_websocket_session_is_relayed_as_the_upstream_speaks_it(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    """Bytes both ways after the upstream's 101 (the gateway parses no frame): a close
    code the upstream chose, a 6 MiB message, an upstream that refuses the upgrade
    answered as it answered, and the session's access-log line when it ends."""
    policies = routes_dir(
        tmp_path,
        "upstream: core\nroutes:\n  - {methods: [GET], path: '/ws/{rest...}', scopes: [me:read]}\n",
    )
    # aiohttp's client and server leave the TCP connection open a while after the close
    # handshake; a relay that reads no frame sees the end when a side closes or falls idle.
    config = make_config(tmp_path, database_url, upstream.url, policies=policies,
                         limits={"websocket_idle_seconds": 1})  # fmt: skip
    async with running_gateway(config) as gateway:
        key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        await _three_sessions(gateway.proxy, key)
        started = time.monotonic()
        while len(sessions := [line for line in gateway.log_lines()
                               if line["path"].startswith("/ws/")]) < 3:  # fmt: skip
            # A session is logged when its connections close; the log is batched.
            assert time.monotonic() - started < 5, sessions
            await asyncio.sleep(0.05)
    assert sorted((line["path"], line["status"]) for line in sessions) == [
        ("/ws/close-4003", 101), ("/ws/echo", 101), ("/ws/refuse", 403)]  # fmt: skip
    assert all(line["upstream"] == "core" for line in sessions)


async def test_an_idle_websocket_is_cut(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    """No byte either way for `limits.websocket_idle_seconds`: both connections close."""
    policies = routes_dir(
        tmp_path, "upstream: core\nroutes:\n  - {methods: [GET], path: /ws, scopes: [me:read]}\n"
    )
    config = make_config(tmp_path, database_url, upstream.url, policies=policies,
                         limits={"websocket_idle_seconds": 0.5})  # fmt: skip
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        async with http.ws_connect(gateway.proxy + "/ws", headers=bearer(key)) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=2) == "echo:hi"
            started = time.monotonic()
            message = await ws.receive(timeout=5)
            cut = time.monotonic() - started
    assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE)
    assert 0.4 <= cut < 2


async def _three_sessions(proxy: str, key: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(proxy + "/ws/close-4003", headers=bearer(key)) as ws:
            message = await ws.receive(timeout=2)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert (message.data, message.extra) == (4003, "policy says no")
        big = bytes(range(256)) * (6 * 4096)  # 6 MiB, over aiohttp's default 4 MiB
        async with http.ws_connect(proxy + "/ws/echo", headers=bearer(key),
                                   max_msg_size=0) as ws:  # fmt: skip
            await ws.send_bytes(big)
            assert await ws.receive_bytes(timeout=10) == big[::-1]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(proxy + "/ws/refuse", headers=bearer(key))
        assert refused.value.status == 403
        assert (
            refused.value.headers is not None and refused.value.headers["X-Upstream"] == "refused"
        )


async def test_head_and_bodiless_statuses_are_relayed_without_waiting_for_a_body(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with http.head(gateway.proxy + "/v1/public/x") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 100  # the upstream's, kept for HEAD
        assert await response.read() == b""
    assert time.monotonic() - started < 1
    async with http.get(gateway.proxy + "/v1/public/no-content") as response:
        assert response.status == 204
        assert response.headers["X-Upstream"] == "yes"
    assert time.monotonic() - started < 1
    assert [r.method for r in upstream.received] == ["HEAD", "GET"]


async def test_expect_100_continue_is_answered_after_authorization(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    user = unique("user")
    await gateway.member(user, "organization", "acme")
    key = (await gateway.create_key(user, ["projects:write"]))["key"]
    port = urlsplit(gateway.proxy).port
    assert port is not None

    async def upload(token: str) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/organizations/acme/projects HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 5\r\n"
            f"Expect: 100-continue\r\n\r\n".encode()
        )
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        if first.startswith(b"HTTP/1.1 100"):
            writer.write(b"hello")
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        else:
            rest = b""
        writer.close()
        return first, rest

    refused, _ = await upload("gwk_" + "A" * 38)
    assert refused.startswith(b"HTTP/1.1 401")  # no 100: the body is never sent
    first, rest = await upload(key)
    assert first.startswith(b"HTTP/1.1 100 Continue")
    assert rest.startswith(b"HTTP/1.1 200")
    [seen] = upstream.received
    assert seen.body == b"hello" and "Expect" not in seen.headers
