"""The admin application (keys, memberships, audit, health, metrics): an aiohttp app
over the resources the composition root (`runtime.Gateway`) opened. It owns none of
them: the proxy and decision listeners run whether or not it is served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.admin.api import add_routes as add_admin_routes
from gateway.appkeys import CAUGHT_UP, CONFIG, METRICS, POLICIES, POOL, READINESS, SCOPES

if TYPE_CHECKING:
    from gateway.runtime import Gateway


def create_admin_app(gateway: Gateway) -> web.Application:
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
