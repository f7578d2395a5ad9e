"""`gateway demo`: everything embedded — database, an echo upstream that also plays the
host application (its sign-in and JWKS, for the API keys page), a demo key and curl lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt
import msgspec
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

from gateway.audit.events import Actor
from gateway.foundation.config import Config, SelfService, Session
from gateway.keys import management, validation
from gateway.observability.diagnostics import configure_logging
from gateway.resources import Options
from gateway.runtime import Gateway

DEMO_USER = "demo-user"
DEMO_KEY_NAME = "demo"
ADMIN = Actor("admin")  # the demo's own set-up, as an operator would do it
SESSION_COOKIE = "demo_session"
HOST_ISSUER = "demo-host-app"
SESSION_AUDIENCE = "gateway-api-keys"
SESSION_SECONDS = 8 * 3600


@dataclass
class HostApp:
    """The demo's stand-in for the host application: it signs people in (always as
    demo-user) with a session JWT and publishes the key that verifies it."""

    upstream_url: str
    gateway_url: str = ""  # set once the proxy listens
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    kid: str = "demo-host-1"

    def jwks(self) -> dict[str, object]:
        jwk = json.loads(OKPAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def session_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": HOST_ISSUER,
            "aud": SESSION_AUDIENCE,
            "sub": DEMO_USER,
            "email": "demo@example.com",
            "iat": now,
            "exp": now + SESSION_SECONDS,
        }
        return jwt.encode(claims, self.key, "EdDSA", headers={"kid": self.kid})

    def self_service(self, settings: SelfService) -> SelfService:
        session = Session(
            jwks_url=f"{self.upstream_url}/.well-known/jwks.json",
            issuer=HOST_ISSUER,
            audience=SESSION_AUDIENCE,
            algorithms=["EdDSA"],
            cookie=SESSION_COOKIE,
            login_url=f"{self.upstream_url}/login",
        )
        return msgspec.structs.replace(settings, enabled=True, session=session)

    async def login(self, request: web.Request) -> web.Response:
        target = request.query.get("return_to", "")
        # Only a path on the gateway: an open redirect would be a phishing aid.
        if not target.startswith("/") or target.startswith("//"):
            target = "/account/api-keys"
        response = web.HTTPSeeOther(self.gateway_url + target)
        response.set_cookie(
            SESSION_COOKIE,
            self.session_token(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Lax",
            path="/",
        )
        return response

    async def jwks_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks())


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
    configure_logging(config.logging.format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(config))
    print("\nstopped.")
    return 0


async def _start_upstream(host_app: HostApp) -> web.AppRunner:
    echo = web.Application()
    echo.router.add_get("/login", host_app.login)
    echo.router.add_get("/.well-known/jwks.json", host_app.jwks_endpoint)
    echo.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(echo, access_log=None)
    await runner.setup()
    host, _, port = host_app.upstream_url.split("//")[1].partition(":")
    await web.TCPSite(runner, host, int(port.split("/")[0] or 80)).start()
    return runner


async def _demo(config: Config) -> None:
    stop = _stop_on_signals()
    upstream_url = config.upstreams["core"].url if "core" in config.upstreams else None
    host_app = HostApp((upstream_url or "http://127.0.0.1:9000").rstrip("/"))
    echo_runner = await _start_upstream(host_app)
    admin_token = os.environ.get("GATEWAY_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    config = msgspec.structs.replace(
        config,
        admin_token=admin_token,
        self_service=host_app.self_service(config.self_service),
        # The README's nginx and Caddy configurations ask this listener for decisions.
        decisions=msgspec.structs.replace(config.decisions, enabled=True),
    )
    # The demo owns its embedded database: Ctrl-C stops it too.
    options = Options(embedded_cleanup="stop", log_requests=False)
    try:
        async with Gateway(config, options) as gateway:
            key = await _demo_key(gateway)
            assert gateway.proxy_address is not None
            host_app.gateway_url = _base(gateway.proxy_address)
            _print_demo(host_app.gateway_url, config, key, admin_token)
            await stop.wait()
    finally:
        await echo_runner.cleanup()


def _stop_on_signals() -> asyncio.Event:
    """Ctrl-C, or SIGTERM (what `kill`, a script or a process manager sends): either
    stops the demo the same way, through the normal exits, so the embedded database
    it started is stopped too. Set up before anything is printed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _demo_key(gateway: Gateway) -> str:
    """A fresh demo key; the one the previous demo made is revoked (the database keeps
    only hashes, so it cannot be shown again), so demos do not pile up live keys."""
    scopes = ["me:read", "organizations:read", "projects:read", "actor_tokens:create"]
    body = {"user_id": DEMO_USER, "name": DEMO_KEY_NAME, "scopes": scopes}
    spec = validation.validate_key(body, gateway.scopes, datetime.now(UTC))
    assert not isinstance(spec, list)
    async with gateway.pool.acquire() as conn:
        prefix = gateway.config.keys.prefix
        for old in await management.list_keys(conn, DEMO_USER):
            if old["name"] == DEMO_KEY_NAME and old["status"] == "active":
                await management.revoke_key(conn, old["id"], actor=ADMIN)
        created = await management.create_key(conn, spec, prefix, actor=ADMIN)
        await management.set_membership(
            conn, DEMO_USER, "organization", "acme", member=True, actor=ADMIN
        )
    return str(created["key"])


def _base(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def _print_demo(base: str, config: Config, key: str, admin_token: str) -> None:
    auth = f'-H "Authorization: Bearer {key}"'
    admin = f"http://{config.admin.host}:{config.admin.port}"
    page = base + config.self_service.path
    print(
        f"""
gateway demo is running (Ctrl-C stops everything)
  proxy  {base}    admin {admin}    upstream: demo echo at {config.upstreams["core"].url}

API keys page (sign in as {DEMO_USER} with one click, create a key, use it below):
  {page}

demo key for user {DEMO_USER} (member of organization acme), shown once:
  {key}

  # 200: the key holds me:read
  curl -i {auth} {base}/v1/me
  # 200: {DEMO_USER} is a member of acme
  curl -i {auth} {base}/v1/organizations/acme/projects
  # 401: no credential
  curl -i {base}/v1/me
  # 403: deleting a project needs projects:admin
  curl -i -X DELETE {auth} {base}/v1/projects/p1
  # 403: {DEMO_USER} is not a member of globex
  curl -i {auth} {base}/v1/organizations/globex/projects
  # 201: mint an actor token (then use it as the Bearer credential)
  curl -i -X POST {auth} {base}/auth/actor-tokens

behind nginx or Caddy instead (README "Behind nginx, Envoy, Traefik or Caddy"):
  their decision endpoints answer on http://{config.decisions.listen.host}:{config.decisions.listen.port}/decisions/

admin API token for this demo: {admin_token}
  curl -i -H "Authorization: Bearer {admin_token}" "{admin}/admin/v1/keys?user_id={DEMO_USER}"
""",
        flush=True,
    )
