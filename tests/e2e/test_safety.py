"""Step 1: requests the gateway cannot treat safely are refused and never forwarded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    raw_request,
    running_gateway,
    unique,
)


def _port(gateway: RunningGateway) -> int:
    port = urlsplit(gateway.proxy).port
    assert port is not None
    return port


async def _key(gateway: RunningGateway, org: str = "org-own") -> str:
    user = unique("user")
    await gateway.member(user, "organization", org)
    created = await gateway.create_key(user, ["projects:read", "me:read"])
    return str(created["key"])


BAD_PATHS = [
    "/v1/organizations/org-own/../org-foreign/projects",
    "/v1/organizations/org-own/%2e%2e/org-foreign/projects",
    "/v1/organizations/org-own/.%2e/org-foreign/projects",
    "/v1/organizations/org-own/%2E%2E/org-foreign/projects",
    "/v1/organizations/org-foreign%2Fx/projects",
    "/v1/organizations/org-foreign%2fx/projects",
    "/v1/organizations/org-foreign%5cx/projects",
    "/v1/organizations//projects",
    "/v1/./organizations/org-own/projects",
    "/v1/organizations/org-own/projects/.",
    "/v1/organizations/org-own/projects/..",
    "/v1/organizations/org-own/..;/org-foreign/projects",
    "/v1/organizations/org%00/projects",
    "/v1/organizations/%252e%252e/projects",
    "/v1/organizations/org-own/%zz/projects",
    "/v1/organizations/%ff%fe/projects",
    "/v1/organizations/org-own\\..\\org-foreign/projects",
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_ambiguous_paths_are_400_and_not_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, path: str
) -> None:
    key = await _key(gateway)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    answer = await raw_request(_port(gateway), request.encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"application/problem+json" in answer
    assert upstream.received == []


MALFORMED = [
    b"GET /v1/me HTTP/2.0\r\nHost: x\r\n\r\n",
    b"get /v1/me HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/v1/me HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/me HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/me HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    b"POST /v1/me HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
    b"GET /v1/me\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", MALFORMED)
async def test_malformed_requests_are_4xx_and_not_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, request_bytes: bytes
) -> None:
    key = await _key(gateway)
    request_bytes = request_bytes.replace(
        b"Host: x\r\n", f"Host: x\r\nX-API-Key: {key}\r\n".encode()
    )
    answer = await raw_request(_port(gateway), request_bytes)
    # aiohttp echoes the request's version in the status line (HTTP/2.0 400 ...).
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"404"), answer[:80]
    assert upstream.received == []


async def test_foreign_organization_is_403_and_own_is_forwarded_verbatim(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    key = await _key(gateway)
    async with http.get(
        gateway.proxy + "/v1/organizations/org-foreign/projects", headers=bearer(key)
    ) as response:
        assert response.status == 403
    assert upstream.received == []
    path = "/v1/organizations/org-own/projects?q=%2e%2e&x=..%2f"
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    answer = await raw_request(_port(gateway), request.encode())
    assert answer.startswith(b"HTTP/1.1 200")
    assert [r.raw_path for r in upstream.received] == [path]


async def test_header_section_over_the_limit_is_431(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    many = "".join(f"X-Filler-{i}: {'a' * 100}\r\n" for i in range(200))
    answer = await raw_request(
        _port(gateway), f"GET /v1/me HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode()
    )
    assert answer.split(b" ", 2)[1] == b"431", answer[:60]
    one_long = f"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Long: {'a' * 20000}\r\n\r\n"
    answer = await raw_request(_port(gateway), one_long.encode())
    assert answer.split(b" ", 2)[1] == b"431", answer[:60]
    assert upstream.received == []


async def test_declared_body_over_the_limit_is_413_with_nothing_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await _key(gateway)
    limit = gateway.config.limits.max_body_bytes
    head = (
        f"POST /v1/organizations/org-own/projects HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {limit + 1}\r\n\r\n"
    )
    answer = await raw_request(_port(gateway), head.encode() + b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 413") or b" 403 " in answer[:20], answer[:60]
    assert upstream.received == []


async def test_chunked_body_over_the_limit_is_413(
    gateway: RunningGateway, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    user = unique("user")
    await gateway.member(user, "organization", "org-own")
    key = (await gateway.create_key(user, ["projects:write"]))["key"]
    limit = gateway.config.limits.max_body_bytes

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        while sent <= limit:
            yield b"x" * 65536
            sent += 65536

    async with http.post(
        gateway.proxy + "/v1/organizations/org-own/projects", data=body(), headers=bearer(key)
    ) as response:
        assert response.status == 413
    # Whatever reached the upstream is a cut-off body, never a complete request.
    assert all(len(r.body) <= limit for r in upstream.received)


async def test_client_that_never_finishes_its_headers_is_disconnected(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    config = make_config(tmp_path, database_url, upstream.url, limits={"header_timeout_seconds": 1})
    async with running_gateway(config) as gateway:
        port = _port(gateway)
        # From the accept: half a request line, then nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /v1/public/x HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        assert data == b"" or data.startswith(b"HTTP/1.1 408")
        assert 0.5 <= time.monotonic() - started <= 2.5
        writer.close()
        # On a kept-alive connection: from the end of the previous response.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/public/x HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        writer.write(b"GET /v1/public/y HTTP/1.1\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
        assert b"HTTP/1.1 200" not in rest.split(b"\r\n\r\n", 1)[-1]
        assert 0.5 <= time.monotonic() - started <= 2.5
        writer.close()
    assert [r.raw_path for r in upstream.received] == ["/v1/public/x"]
