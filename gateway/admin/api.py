"""The admin API (keys, memberships), health and metrics, on the admin listener."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from gateway.admin.openapi import DOCUMENT
from gateway.appkeys import CAUGHT_UP, CONFIG, METRICS, POLICIES, POOL, READINESS, SCOPES
from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.credits import balance, pools
from gateway.credits.refill import check_credits
from gateway.foundation.database import DATABASE_DOWN
from gateway.foundation.jsonbody import json_response, read_object
from gateway.foundation.problems import Problem, invalid_fields
from gateway.keys import lifetime, management, networks, organizations, validation
from gateway.keys.validation import whole_number
from gateway.usage.report import parse_range
from gateway.webhooks import endpoints as webhooks
from gateway.webhooks.destinations import Destinations

log = logging.getLogger("gateway.admin")
REQUEST_ID = web.RequestKey("request_id", str)  # given by the problems middleware
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encode = msgspec.json.Encoder().encode
_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = secrets.token_hex(16)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
        response.headers["X-Request-Id"] = request_id
        return response
    except Problem as problem:
        return problem.response(request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return Problem(exc.status, "http-" + str(exc.status), exc.reason).response(request_id)
    except DATABASE_DOWN:
        return Problem(503, "database-unavailable", "the database is unavailable").response(
            request_id, {"Retry-After": "2"}
        )
    except Exception:
        log.exception("admin API failure (request_id %s)", request_id)
        return Problem(500, "internal-error", "the request failed").response(request_id)


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _OPEN:
        return await handler(request)
    token = request.app[CONFIG].admin_token
    if not token:
        raise Problem(503, "admin-disabled", "GATEWAY_ADMIN_TOKEN is not set")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Problem(
            401,
            "admin-unauthorized",
            "missing or wrong admin token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def read_your_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A change is answered once this process's caches reflect it: a key revoked here
    is refused by this process's very next request."""
    response = await handler(request)
    if request.method not in _READS and response.status < 400:
        await request.app[CAUGHT_UP]()
    return response


def _actor(request: web.Request) -> Actor:
    return Actor("admin", request.get(REQUEST_ID), request.remote)


def _not_found(key_id: str) -> Problem:
    return Problem(404, "key-not-found", "no such key")


def _key_limits(request: web.Request) -> list[str]:
    """The names a key's `rate_limits` may use: the `by: key` limits of the active set."""
    limits = request.app[POLICIES].current.rate_limits
    return [name for name, limit in limits.items() if limit.by == "key"]


async def create_key(request: web.Request) -> web.Response:
    body = await read_object(request)
    spec = validation.validate_key(
        body, request.app[SCOPES], datetime.now(UTC), _key_limits(request)
    )
    if isinstance(spec, list):
        raise invalid_fields(spec)
    lifetime.check_new(spec.expires_at, datetime.now(UTC), _max_days(request))
    async with request.app[POOL].acquire() as conn:
        prefix = request.app[CONFIG].keys.prefix
        created = await management.create_key(conn, spec, prefix, actor=_actor(request))
    return json_response(created, 201)


def _max_days(request: web.Request) -> int | None:
    return request.app[CONFIG].key_policy.max_lifetime_days


def _shown(request: web.Request, key: dict[str, Any]) -> dict[str, Any]:
    """A key as listed: `blocked` when over the key policy's lifetime."""
    return lifetime.mark_blocked(key, _max_days(request))


async def list_keys(request: web.Request) -> web.Response:
    user_id = request.query.get("user_id")
    errors = validation.validate_user_id(user_id)
    if errors or user_id is None:
        raise invalid_fields(errors)
    async with request.app[POOL].acquire() as conn:
        keys = await management.list_keys(conn, user_id)
    return json_response({"keys": [_shown(request, key) for key in keys]})


async def get_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    try:
        async with request.app[POOL].acquire() as conn:
            return json_response(_shown(request, await management.get_key(conn, key_id)))
    except management.NotFound:
        raise _not_found(key_id) from None


async def update_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    body = await read_object(request)
    errors = validation.check_update(body, management.UPDATABLE, _key_limits(request))
    if errors:
        raise invalid_fields(errors)
    try:
        async with request.app[POOL].acquire() as conn:
            updated = await management.update_key(conn, key_id, None, body, actor=_actor(request))
    except management.NotFound:
        raise _not_found(key_id) from None
    return json_response(_shown(request, updated))


async def key_networks(request: web.Request) -> web.Response:
    """The networks the key was used from in the last 30 days (the new-network notice)."""
    key_id = request.match_info["id"]
    try:
        async with request.app[POOL].acquire() as conn:
            await management.get_key(conn, key_id)
            found = await networks.recent(conn, key_id)
    except management.NotFound:
        raise _not_found(key_id) from None
    return json_response({"networks": found})


async def change_credits(request: web.Request) -> web.Response:
    """{"set": N | null}, {"increment": N} or {"decrement": N}: the key's credits after."""
    key_id = request.match_info["id"]
    body = await read_object(request)
    errors = balance.check_change(body)
    if errors:
        raise invalid_fields(errors)
    try:
        async with request.app[POOL].acquire() as conn:
            credits = await management.change_credits(conn, key_id, body, actor=_actor(request))
    except management.NotFound:
        raise _not_found(key_id) from None
    except management.Conflict as exc:
        raise Problem(409, "unlimited-credits", str(exc)) from None
    return json_response({"credits": credits})


async def user_credits(request: web.Request) -> web.Response:
    """The user's credit pool (§21): GET it, PUT `{remaining, refill}`, POST `{"set": N |
    null}`, `{"increment": N}` or `{"decrement": N}`, DELETE it. Answers `{"user_id",
    "credits"}`, `credits` null when the user has none (their keys are unlimited)."""
    user_id, method = request.match_info["id"], request.method
    body = await read_object(request) if method in ("PUT", "POST") else {}
    errors = check_credits(body) if method == "PUT" else []
    if method == "POST":
        errors = balance.check_change(body)
    if errors:
        raise invalid_fields(errors)
    try:
        async with request.app[POOL].acquire() as conn:
            if method == "GET":
                found = await pools.get(conn, user_id)
            elif method == "POST":
                found = await pools.change(conn, user_id, body, actor=_actor(request))
            else:
                given = body if method == "PUT" else None
                found = await pools.put(conn, user_id, given, actor=_actor(request))
    except pools.NoPool:
        raise Problem(
            409, "unlimited-credits", "the user has no credit pool: set a balance first"
        ) from None
    return json_response({"user_id": user_id, "credits": found})


async def key_usage(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    wanted = parse_range(request.query, datetime.now(UTC))
    if isinstance(wanted, list):
        raise invalid_fields(wanted)
    try:
        async with request.app[POOL].acquire() as conn:
            return json_response(await management.key_usage(conn, key_id, None, wanted))
    except management.NotFound:
        raise _not_found(key_id) from None


def _no_webhook() -> Problem:
    return Problem(404, "webhook-not-found", "no such webhook endpoint")


async def create_webhook(request: web.Request) -> web.Response:
    body = await read_object(request)
    errors = webhooks.check_endpoint(body)
    if errors:
        raise invalid_fields(errors)
    allowed = request.app[CONFIG].webhooks.allowed_networks
    try:
        async with request.app[POOL].acquire() as conn:
            created = await webhooks.create(
                conn, body, Destinations(allowed), actor=_actor(request)
            )
    except webhooks.DestinationNotAllowed as exc:
        detail = f"{exc}; add it to webhooks.allowed_networks to allow it"
        raise Problem(422, "webhook-destination-not-allowed", detail) from None
    return json_response(created, 201)


async def list_webhooks(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return json_response({"webhooks": await webhooks.listing(conn)})


async def webhook_call(request: web.Request) -> web.Response:
    """GET, DELETE /admin/v1/webhooks/{id}, its rotate-secret and deliveries."""
    endpoint_id, actor = request.match_info["id"], _actor(request)
    action = request.match_info.get("action", "")
    try:
        async with request.app[POOL].acquire() as conn:
            if action == "rotate-secret":
                return json_response(await webhooks.rotate_secret(conn, endpoint_id, actor=actor))
            if action == "deliveries":
                found = await webhooks.deliveries(conn, endpoint_id)
                return json_response({"deliveries": found})
            if request.method == "DELETE":
                await webhooks.delete(conn, endpoint_id, actor=actor)
                return web.Response(status=204)
            return json_response(await webhooks.get(conn, endpoint_id))
    except webhooks.NotFound:
        raise _no_webhook() from None


async def retry_delivery(request: web.Request) -> web.Response:
    try:
        async with request.app[POOL].acquire() as conn:
            return json_response(await webhooks.retry(conn, request.match_info["id"]), 202)
    except webhooks.NotFound:
        raise Problem(404, "delivery-not-found", "no such webhook delivery") from None


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    try:
        async with request.app[POOL].acquire() as conn:
            await management.revoke_key(conn, key_id, actor=_actor(request))
    except management.NotFound:
        raise _not_found(key_id) from None
    return web.Response(status=204)


async def rotate_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    body = await read_object(request, empty_is_object=True)
    fields = {"grace_seconds", "expires_in_days", "expires_at"}
    errors = [(name, "unknown field") for name in sorted(set(body) - fields)]
    grace = whole_number(body.get("grace_seconds", 0))
    if grace is None or not 0 <= grace <= 30 * 86400:
        errors.append(("grace_seconds", "must be a whole number from 0 to 2592000"))
    expires_at, expiry_errors = validation.expiry(body, datetime.now(UTC))
    errors += expiry_errors
    if errors or grace is None:
        raise invalid_fields(errors)
    given = "expires_in_days" in body or "expires_at" in body
    try:
        async with request.app[POOL].acquire() as conn:
            prefix = request.app[CONFIG].keys.prefix
            created = await management.rotate_key(
                conn,
                key_id,
                grace,
                prefix,
                actor=_actor(request),
                expires_at=expires_at if given else management.SAME_EXPIRY,
                max_lifetime_days=_max_days(request),
            )
    except management.NotFound:
        raise _not_found(key_id) from None
    except management.Conflict as exc:
        raise Problem(409, "key-not-active", str(exc)) from None
    return json_response(created, 201)


async def _membership(request: web.Request, *, member: bool) -> web.Response:
    parsed = validation.validate_membership(await read_object(request))
    if isinstance(parsed, list):
        raise invalid_fields(parsed)
    async with request.app[POOL].acquire() as conn:
        await management.set_membership(conn, *parsed, member=member, actor=_actor(request))
    return web.Response(status=204)


async def put_membership(request: web.Request) -> web.Response:
    return await _membership(request, member=True)


async def delete_membership(request: web.Request) -> web.Response:
    return await _membership(request, member=False)


async def organization_policy(request: web.Request) -> web.Response:
    """GET or PUT an organization's key policy; 404 for an organization no membership
    names (a typo would otherwise set a policy nobody is bound by)."""
    organization = request.match_info["organization"]
    days: int | None = None
    if request.method == "PUT":
        body = await read_object(request)
        errors = organizations.check_days(body)
        if errors:
            raise invalid_fields(errors)
        days = body["max_lifetime_days"]
    try:
        async with request.app[POOL].acquire() as conn:
            if request.method == "PUT":
                found = await organizations.set_policy(
                    conn, organization, days, actor=_actor(request)
                )
            else:
                found = await organizations.get_policy(conn, organization)
    except organizations.UnknownOrganization:
        raise Problem(
            404, "organization-not-found", f"no membership names organization {organization!r}"
        ) from None
    return json_response(found)


async def audit_events(request: web.Request) -> web.Response:
    parsed = audit.parse_query(dict(request.query))
    if isinstance(parsed, list):
        raise invalid_fields(parsed)
    async with request.app[POOL].acquire() as conn:
        events, cursor = await audit.query(conn, parsed)
    return json_response({"events": events, "next_cursor": cursor})


async def openapi(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """503 only while draining: a database or Redis outage is said, not refused (§20)."""
    app = request.app
    readiness = app[READINESS]
    if readiness.draining:
        return json_response({"status": "draining"}, 503)
    database = "unavailable" if readiness.database_down() else await _database(app[POOL])
    policies = app[POLICIES].current
    return json_response(
        {"status": "ready", "database": database, "redis": readiness.redis(),
         "policy_version": policies.version}
    )  # fmt: skip


async def _database(pool: asyncpg.Pool) -> str:
    try:
        async with asyncio.timeout(1):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return "unavailable"
    return "ok"


async def metrics(request: web.Request) -> web.Response:
    readiness, found = request.app[READINESS], request.app[METRICS]
    found.dependency_up.labels("database").set(0 if readiness.database_down() else 1)
    redis = readiness.redis()
    if redis != "off":
        found.dependency_up.labels("redis").set(1 if redis == "ok" else 0)
    body = found.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def add_routes(app: web.Application) -> None:
    app.middlewares.extend([problems, admin_auth, read_your_writes])
    app.router.add_post("/admin/v1/keys", create_key)
    app.router.add_get("/admin/v1/keys", list_keys)
    app.router.add_get("/admin/v1/keys/{id}", get_key)
    app.router.add_patch("/admin/v1/keys/{id}", update_key)
    app.router.add_delete("/admin/v1/keys/{id}", revoke_key)
    app.router.add_post("/admin/v1/keys/{id}/rotate", rotate_key)
    app.router.add_post("/admin/v1/keys/{id}/credits", change_credits)
    app.router.add_get("/admin/v1/keys/{id}/usage", key_usage)
    app.router.add_get("/admin/v1/keys/{id}/networks", key_networks)
    app.router.add_post("/admin/v1/webhooks", create_webhook)
    app.router.add_get("/admin/v1/webhooks", list_webhooks)
    app.router.add_get("/admin/v1/webhooks/{id}", webhook_call)
    app.router.add_delete("/admin/v1/webhooks/{id}", webhook_call)
    app.router.add_post("/admin/v1/webhooks/{id}/{action:rotate-secret}", webhook_call)
    app.router.add_get("/admin/v1/webhooks/{id}/{action:deliveries}", webhook_call)
    app.router.add_post("/admin/v1/webhook-deliveries/{id}/retry", retry_delivery)
    for method in ("GET", "PUT", "POST", "DELETE"):
        app.router.add_route(method, "/admin/v1/users/{id}/credits", user_credits)
    app.router.add_put("/admin/v1/memberships", put_membership)
    app.router.add_delete("/admin/v1/memberships", delete_membership)
    policy = "/admin/v1/organizations/{organization}/key-policy"
    app.router.add_get(policy, organization_policy)
    app.router.add_put(policy, organization_policy)
    app.router.add_get("/admin/v1/audit", audit_events)
    app.router.add_get("/admin/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
