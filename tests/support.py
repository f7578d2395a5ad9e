"""Real parts for tests: a recording upstream, a running gateway, databases."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from gateway.audit.events import Actor
from gateway.foundation.config import Config
from gateway.keys import management, validation
from gateway.keys.store import KeyStore
from gateway.resources import Options
from gateway.runtime import Gateway

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-0123456789"


@dataclass
class Received:
    method: str
    raw_path: str
    version: tuple[int, int]
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class RecordingUpstream:
    """An HTTP server on loopback that keeps every request it is sent."""

    received: list[Received] = field(default_factory=list)
    url: str = ""
    # Per-path behaviour: "stall" (never answer), "slow-body", "reset", "big/<n>",
    # "chunked/<n>" (no Content-Length), "delay/<seconds>", "no-content", "echo-body", "hop".

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        self.received.append(
            Received(
                request.method,
                request.raw_path,
                request.version,
                CIMultiDict(request.headers),
                body,
            )
        )
        path = request.path
        if path.startswith("/stall"):
            await asyncio.sleep(3600)
        if path.startswith("/delay/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        if path.startswith("/reset"):
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if path.startswith("/slow-body"):
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first")
            await asyncio.sleep(3600)
            return response
        if path.startswith("/big/"):
            return await _stream(request, _pattern(int(path.rsplit("/", 1)[1])))
        if path.startswith("/chunked/"):
            return await _stream(request, _pattern(int(path.rsplit("/", 1)[1])), sized=False)
        if path.endswith("/no-content"):
            return web.Response(status=204, headers={"X-Upstream": "yes"})
        if path.startswith("/echo-body"):
            return await _stream(request, body)
        headers = {
            "Set-Cookie": "upstream=1",
            "Connection": "close, X-Secret-Hop",
            "X-Secret-Hop": "1",
        }
        return web.json_response(
            {"method": request.method, "path": request.raw_path, "headers": dict(request.headers)},
            headers=headers if path.startswith("/hop") else None,
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.received.append(
            Received(
                request.method, request.raw_path, request.version, CIMultiDict(request.headers), b""
            )
        )
        if request.path.endswith("/refuse"):  # answers the handshake without switching
            return web.json_response({"error": "not for you"}, status=403,
                                     headers={"X-Upstream": "refused"})  # fmt: skip
        ws = web.WebSocketResponse(protocols=("chat",), max_msg_size=0)
        await ws.prepare(request)
        if request.path.endswith("/close-4003"):
            await ws.close(code=4003, message=b"policy says no")
            return ws
        async for message in ws:
            if message.type == web.WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type == web.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    def count(self, path_prefix: str = "") -> int:
        return sum(1 for r in self.received if r.raw_path.startswith(path_prefix))


async def _stream(request: web.Request, data: bytes, sized: bool = True) -> web.StreamResponse:
    """`data` in 64 KiB writes; with a Content-Length, else chunked."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if sized:
        response.content_length = len(data)
    await response.prepare(request)
    for start in range(0, len(data), 65536):
        await response.write(data[start : start + 65536])
    await response.write_eof()
    return response


def _pattern(size: int) -> bytes:
    chunk = bytes(range(256))
    return (chunk * (size // 256 + 1))[:size]


@asynccontextmanager
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    upstream.url = f"http://{host}:{port}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


def routes_dir(tmp_path: Path, text: str) -> Path:
    """A policy directory holding one file with `text`."""
    directory = tmp_path / "routes"
    directory.mkdir()
    (directory / "routes.yaml").write_text(text)
    return directory


def make_config(
    tmp_path: Path, database_url: str, upstream_url: str, policies: Path | None = None, **extra: Any
) -> Config:
    """A test configuration; `policies` is used in place, else the shipped set is copied."""
    policy_dir = policies or tmp_path / "policies"
    if policies is None and not policy_dir.exists():
        shutil.copytree(ROOT / "policies", policy_dir)
    raw: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "database": {"url": database_url, "min_pool_size": 1, "max_pool_size": 5},
        "policies": {"dir": str(policy_dir), "reload": True},
        "upstreams": {
            "core": {"url": upstream_url, "timeout_seconds": 2, "connect_timeout_seconds": 1}
        },
        "base_dir": str(tmp_path),
        "admin_token": ADMIN_TOKEN,
    }
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return msgspec.convert(raw, Config)


@dataclass
class RunningGateway:
    runtime: Gateway
    proxy: str
    admin: str
    config: Config
    access_log: io.BytesIO

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.access_log.getvalue().splitlines()]

    @property
    def store(self) -> KeyStore:
        return self.runtime.store

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    @property
    def decisions_address(self) -> tuple[str, int]:
        assert self.runtime.decisions_address is not None, "decisions are not enabled"
        return self.runtime.decisions_address

    async def create_key(
        self, user_id: str, scopes: list[str], name: str = "test", **extra: Any
    ) -> dict[str, Any]:
        limits = self.runtime.policies.current.rate_limits
        spec = validation.validate_key(
            {"user_id": user_id, "name": name, "scopes": scopes, **extra},
            self.runtime.scopes,
            __import__("datetime").datetime.now(__import__("datetime").UTC),
            [name for name, limit in limits.items() if limit.by == "key"],
        )
        assert not isinstance(spec, list), spec
        async with self.pool.acquire() as conn:
            return await management.create_key(
                conn, spec, self.config.keys.prefix, actor=Actor("admin")
            )

    async def member(self, user_id: str, kind: str, resource: str, *, member: bool = True) -> None:
        async with self.pool.acquire() as conn:
            await management.set_membership(
                conn, user_id, kind, resource, member=member, actor=Actor("admin")
            )


@asynccontextmanager
async def running_gateway(
    config: Config, options: Options | None = None
) -> AsyncIterator[RunningGateway]:
    sink = io.BytesIO()
    options = options or Options(
        listener_check_interval=0.1, last_used_interval=3600, access_log=sink
    )
    async with Gateway(config, options) as runtime:
        assert runtime.proxy_address is not None and runtime.admin_address is not None
        proxy_host, proxy_port = runtime.proxy_address
        host, port = runtime.admin_address
        yield RunningGateway(
            runtime, f"http://{proxy_host}:{proxy_port}", f"http://{host}:{port}", config, sink
        )


@asynccontextmanager
async def gateway_with_routes(
    tmp_path: Path, database_url: str, upstream_url: str, routes: str, **extra: Any
) -> AsyncIterator[RunningGateway]:
    """A running gateway whose policy set is the one file `routes` (YAML text)."""
    config = make_config(
        tmp_path, database_url, upstream_url, policies=routes_dir(tmp_path, routes), **extra
    )
    async with running_gateway(config) as running:
        yield running


def cli_config(tmp_path: Path, config: Config, extra: str = "") -> Path:
    """A configuration file for the CLI beside a running gateway: its database and
    policies, a state directory of its own, and `extra` (YAML lines)."""
    path = tmp_path / "cli.yaml"
    path.write_text(
        f"database: {{url: '{config.database.url}'}}\nstate_dir: {tmp_path}/state\n"
        f"policies: {{dir: '{config.policies.dir}'}}\n{extra}"
    )
    return path


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def raw_request(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send bytes as they are; return everything the server answers until it closes or pauses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)
    finally:
        writer.close()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


async def session_get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)
