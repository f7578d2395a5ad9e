"""`PATH`, `PATH/static/*` and `PATH/v1/*` on the proxy listener: which request goes
where, who is signed in, and the cross-site request forgery rule of cookie mode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from gateway.audit.events import Actor
from gateway.foundation.config import Config, ConfigError
from gateway.foundation.config import SelfService as Settings
from gateway.foundation.database import DATABASE_DOWN
from gateway.foundation.jsonbody import json_reply
from gateway.foundation.problems import Problem
from gateway.http1.messages import OwnedRequest, Reply
from gateway.selfservice import openapi
from gateway.selfservice.api import NO_STORE, KeysApi
from gateway.selfservice.page import Page
from gateway.selfservice.session import (
    Jwks,
    JwksUnavailable,
    SessionRejected,
    SessionUser,
    SessionVerifier,
    file_loader,
    url_loader,
)

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Call = Callable[[OwnedRequest, SessionUser, str, Actor], Awaitable[Reply]]


def _routes(api: KeysApi) -> dict[tuple[str, str], Call]:
    """(shape, method) → handler; `{id}` in the shape stands for one key id."""

    async def session(_r: OwnedRequest, user: SessionUser, _id: str, _a: Actor) -> Reply:
        return api.session(user)

    async def revoke(_r: OwnedRequest, user: SessionUser, key_id: str, actor: Actor) -> Reply:
        return await api.revoke(user, key_id, actor)

    return {
        ("session", "GET"): session,
        ("keys", "GET"): lambda r, u, _id, _a: api.list(r, u),
        ("keys", "POST"): lambda r, u, _id, a: api.create(r, u, a),
        ("keys/{id}", "PATCH"): api.update,
        ("keys/{id}", "DELETE"): revoke,
        ("keys/{id}/rotate", "POST"): api.rotate,
        ("keys/{id}/usage", "GET"): lambda r, u, key_id, _a: api.usage(r, u, key_id),
        ("keys/{id}/networks", "GET"): lambda _r, u, key_id, _a: api.networks(u, key_id),
    }


class Visit(Protocol):
    """Where the caller's access log learns who was signed in, even when a call fails."""

    user_id: str | None


class SelfService:
    """Answers everything under `self_service.path`."""

    def __init__(
        self,
        settings: Settings,
        page: Page,
        api: KeysApi,
        verifier: SessionVerifier,
        trusted_origins: Collection[str],
        caught_up: Callable[[], Awaitable[None]],
    ) -> None:
        self.base = settings.path
        self._caught_up = caught_up
        self._session = settings.session
        self._page = page
        self._verifier = verifier
        self._routes = _routes(api)
        self._document = openapi.document(self.base)
        # `*` in cors.allow_origins must not switch the forgery check off.
        self._trusted = frozenset(o for o in trusted_origins if o not in ("*", "null"))

    def owns(self, path: str) -> bool:
        return path == self.base or path.startswith(self.base + "/")

    async def handle(
        self, request: OwnedRequest, path: str, visit: Visit, request_id: str
    ) -> Reply:
        rest = path[len(self.base) :]
        if rest in ("", "/"):
            _allow(request, ("GET", "HEAD"))
            return self._page.html()
        if rest.startswith("/static/"):
            _allow(request, ("GET", "HEAD"))
            asset = self._page.asset(rest.removeprefix("/static/"))
            if asset is None:
                raise Problem(404, "no-route", "no such asset")
            return asset
        if rest == "/v1/openapi.json":
            _allow(request, ("GET", "HEAD"))
            return json_reply(self._document)
        try:
            api_path = rest.removeprefix("/v1/") if rest.startswith("/v1/") else None
            return await self._api(request, api_path, visit, request_id)
        except Problem as problem:
            problem.headers.update(NO_STORE)
            raise

    async def _api(
        self, request: OwnedRequest, rest: str | None, visit: Visit, request_id: str
    ) -> Reply:
        shape, key_id = _shape(rest)
        methods = [m for (s, m) in self._routes if s == shape]
        if not methods:
            raise Problem(404, "no-route", "no such self-service endpoint")
        _allow(request, methods)
        token, from_cookie = self._token(request)
        user = await self._user(token)
        visit.user_id = user.id
        if from_cookie:
            self._check_forgery(request)
        try:
            actor = Actor(f"user:{user.id}", request_id, request.client or None)
            reply = await self._routes[shape, request.method](request, user, key_id, actor)
            if request.method != "GET":
                # The owner's next request through this process must see the change.
                await self._caught_up()
            return reply
        except DATABASE_DOWN:
            raise Problem(
                503,
                "database-unavailable",
                "the database is unavailable; retry shortly",
                headers={"Retry-After": "2"},
            ) from None

    def _check_forgery(self, request: OwnedRequest) -> None:
        """The browser sends a cookie on its own, so a cookie-borne session must come
        from the page's origin (or a trusted one) and with a JSON body. A session in
        `Authorization` cannot be forged by another site and is not checked."""
        if request.method not in _STATE_CHANGING:
            return
        origin = request.headers.get("Origin")
        same_site = origin is not None and urlsplit(origin).netloc == request.host
        if not same_site and origin not in self._trusted:
            raise Problem(403, "cross-site-request", "the request's Origin is not allowed")
        if request.body_exists and request.content_type != "application/json":
            raise Problem(403, "cross-site-request", "a body must be application/json")

    async def _user(self, token: str | None) -> SessionUser:
        try:
            if token is None:
                raise SessionRejected("not signed in (API keys are not accepted here)")
            return await self._verifier.verify(token)
        except SessionRejected as exc:
            extra = {"login_url": self._session.login_url} if self._session.login_url else None
            raise Problem(
                401, "no-session", str(exc), headers={"WWW-Authenticate": "Bearer"}, extra=extra
            ) from None
        except JwksUnavailable:
            raise Problem(
                503,
                "session-keys-unavailable",
                "the sign-in keys cannot be fetched right now; retry shortly",
                headers={"Retry-After": "5"},
            ) from None

    def _token(self, request: OwnedRequest) -> tuple[str | None, bool]:
        """(the session token, or None; whether it came from the cookie)."""
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            return (value.strip() or None if scheme.lower() == "bearer" else None), False
        if "X-API-Key" in request.headers:
            return None, False
        cookie = self._session.cookie
        return (request.cookies.get(cookie) if cookie else None) or None, True


def _shape(rest: str | None) -> tuple[str, str]:
    """`keys/3f…/rotate` → (`keys/{id}/rotate`, `3f…`)."""
    if rest is None:
        return "", ""
    parts = rest.split("/")
    if len(parts) >= 2 and parts[0] == "keys" and parts[1]:
        return "/".join(["keys", "{id}", *parts[2:]]), parts[1]
    return rest, ""


def _allow(request: OwnedRequest, methods: Collection[str]) -> None:
    if request.method not in methods:
        allowed = ", ".join(sorted(methods))
        raise Problem(405, "method-not-allowed", f"use {allowed}", headers={"Allow": allowed})


def from_config(
    config: Config,
    pool: asyncpg.Pool,
    http: aiohttp.ClientSession,
    caught_up: Callable[[], Awaitable[None]],
) -> SelfService | None:
    """The API keys page as configured, or None when `self_service.enabled` is false."""
    settings = config.self_service
    if not settings.enabled:
        return None
    session = settings.session
    if session.jwks_file is not None:
        path = config.resolve(session.jwks_file)
        if not path.is_file():
            raise ConfigError(
                f"{config.source}: self_service.session.jwks_file: cannot read {path}"
            )
        load = file_loader(path)
    else:
        assert session.jwks_url is not None  # config validation: exactly one of the two
        load = url_loader(http, session.jwks_url)
    return SelfService(
        settings,
        Page(settings),
        KeysApi(
            settings,
            config.scopes,
            pool,
            config.keys.prefix,
            config.key_policy.max_lifetime_days,
        ),
        SessionVerifier(session, Jwks(load)),
        config.cors.allow_origins,
        caught_up,
    )
