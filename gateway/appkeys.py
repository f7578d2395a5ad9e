"""Typed state of the admin application (aiohttp `AppKey`): what its handlers read of
the resources the composition root opened."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from gateway.foundation.config import Config
from gateway.foundation.readiness import Readiness
from gateway.observability.metrics import Metrics
from gateway.policy.reloader import ActivePolicies
from gateway.policy.scopes import Catalogue

CONFIG = web.AppKey("config", Config)
SCOPES = web.AppKey("scopes", Catalogue)
METRICS = web.AppKey("metrics", Metrics)
POOL = web.AppKey("pool", asyncpg.Pool)
POLICIES = web.AppKey("policies", ActivePolicies)
READINESS = web.AppKey("readiness", Readiness)
# Awaited after a change: returns once this process's caches reflect it.
CAUGHT_UP = web.AppKey[Callable[[], Awaitable[None]]]("caught_up")
