"""Typed application state (aiohttp `AppKey`): what `create_app` opens, by name."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from gateway.config import Config
from gateway.keys.invalidation import Listener
from gateway.keys.store import KeyStore
from gateway.observability.metrics import Metrics
from gateway.policy.reloader import ActivePolicies
from gateway.policy.scopes import Catalogue
from gateway.ratelimit.limiter import RateLimiter
from gateway.tokens.identity import IdentityTokens

CONFIG = web.AppKey("config", Config)
SCOPES = web.AppKey("scopes", Catalogue)
METRICS = web.AppKey("metrics", Metrics)
DATABASE_URL = web.AppKey("database_url", str)
POOL = web.AppKey("pool", asyncpg.Pool)
STORE = web.AppKey("store", KeyStore)
POLICIES = web.AppKey("policies", ActivePolicies)
PROXY_ADDRESS = web.AppKey("proxy_address", tuple)
DECISIONS_ADDRESS = web.AppKey("decisions_address", tuple)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
IDENTITY_TOKENS = web.AppKey("identity_tokens", IdentityTokens)
LISTENER = web.AppKey("listener", Listener)
