"""`gateway serve` (one process or N sharing the port) and `gateway demo`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from gateway.app import Options, create_app
from gateway.appkeys import CONFIG, POOL, PROXY_ADDRESS, SCOPES
from gateway.config import Config
from gateway.keys import management
from gateway.observability.diagnostics import configure_logging

log = logging.getLogger("gateway")
WORKER_ENV = "GATEWAY_WORKER"


def serve(config: Config, workers: int, loop: str) -> int:
    configure_logging()
    if workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and not os.environ.get(WORKER_ENV):
        return _supervise(workers, loop)
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                print("gateway: --loop uvloop: uvloop is not installed", file=sys.stderr)
                return 2
        else:
            uvloop.install()
    options = Options(
        handle_sighup=True, reuse_port=bool(os.environ.get(WORKER_ENV)), freeze_gc=True
    )
    web.run_app(
        create_app(config, options),
        host=config.admin.host,
        port=config.admin.port,
        reuse_port=options.reuse_port or None,
        print=None,
        access_log=None,
        shutdown_timeout=30,
    )
    return 0


def _supervise(workers: int, loop: str) -> int:
    """Start N workers sharing the ports (SO_REUSEPORT); forward signals; wait."""
    argv = [sys.executable, "-m", "gateway", *sys.argv[1:], "--loop", loop]
    env = {**os.environ, WORKER_ENV: "1"}
    children = [subprocess.Popen(argv, env=env) for _ in range(workers)]  # noqa: S603

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


async def _echo(request: web.Request) -> web.Response:
    """The demo upstream: says what it received, identity headers included."""
    body = {
        "upstream": "demo echo",
        "method": request.method,
        "path": request.raw_path,
        "identity": {k: v for k, v in request.headers.items() if k.startswith("X-Gateway-")},
    }
    return web.json_response(body)


def demo(config: Config) -> int:
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(config))
    print("\nstopped.")
    return 0


async def _demo(config: Config) -> None:
    upstream_url = config.upstreams["core"].url if "core" in config.upstreams else None
    echo = web.Application()
    echo.router.add_route("*", "/{tail:.*}", _echo)
    echo_runner = web.AppRunner(echo, access_log=None)
    await echo_runner.setup()
    host, _, port = (upstream_url or "http://127.0.0.1:9000").split("//")[1].partition(":")
    await web.TCPSite(echo_runner, host, int(port.split("/")[0] or 80)).start()
    admin_token = os.environ.get("GATEWAY_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    # The demo owns its embedded database: Ctrl-C stops it too.
    options = Options(embedded_cleanup="stop", log_requests=False)
    app = create_app(msgspec.structs.replace(config, admin_token=admin_token), options)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.admin.host, config.admin.port).start()
        key = await _demo_key(app)
        _print_demo(app[PROXY_ADDRESS], config, key, admin_token)
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await echo_runner.cleanup()


async def _demo_key(app: web.Application) -> str:
    scopes = ["me:read", "organizations:read", "projects:read", "actor_tokens:create"]
    body = {"user_id": "demo-user", "name": "demo", "scopes": scopes}
    spec = management.validate_key(body, app[SCOPES], datetime.now(UTC))
    assert not isinstance(spec, list)
    async with app[POOL].acquire() as conn:
        created = await management.create_key(conn, spec, app[CONFIG].keys.prefix)
        await management.set_membership(conn, "demo-user", "organization", "acme", member=True)
    return str(created["key"])


def _print_demo(address: tuple[str, int], config: Config, key: str, admin_token: str) -> None:
    host, port = address
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    auth = f'-H "Authorization: Bearer {key}"'
    admin = f"http://{config.admin.host}:{config.admin.port}"
    print(
        f"""
gateway demo is running (Ctrl-C stops everything)
  proxy  {base}    admin {admin}    upstream: demo echo at {config.upstreams["core"].url}

demo key for user demo-user (member of organization acme), shown once:
  {key}

  # 200: the key holds me:read
  curl -i {auth} {base}/v1/me
  # 200: demo-user is a member of acme
  curl -i {auth} {base}/v1/organizations/acme/projects
  # 401: no credential
  curl -i {base}/v1/me
  # 403: deleting a project needs projects:admin
  curl -i -X DELETE {auth} {base}/v1/projects/p1
  # 403: demo-user is not a member of globex
  curl -i {auth} {base}/v1/organizations/globex/projects
  # 201: mint an actor token (then use it as the Bearer credential)
  curl -i -X POST {auth} {base}/auth/actor-tokens

admin API token for this demo: {admin_token}
  curl -i -H "Authorization: Bearer {admin_token}" "{admin}/admin/v1/keys?user_id=demo-user"
""",
        flush=True,
    )
