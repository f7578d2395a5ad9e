"""The admin application (keys, memberships, audit, health, metrics): an aiohttp app
over the resources the composition root (`runtime.Gateway`) opened. It owns none of
them: the proxy and decision listeners run whether or not it is served.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.api import add_routes as add_admin_routes
from gateway.appkeys import CAUGHT_UP, CONFIG, METRICS, POLICIES, POOL, READINESS, SCOPES
from gateway.resources import Resources


def create_admin_app(gateway: Resources) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[CONFIG] = gateway.config
    app[SCOPES] = gateway.scopes
    app[METRICS] = gateway.metrics
    app[POOL] = gateway.pool
    app[POLICIES] = gateway.policies
    app[READINESS] = gateway.readiness
    app[CAUGHT_UP] = gateway.caught_up
    add_admin_routes(app)
    return app
