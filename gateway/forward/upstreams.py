"""Where routes forward to: each configured upstream, its timeouts and its connection pool."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from gateway.config import Upstream
from gateway.forward.client import Origin, Pool


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    name: str
    base: str  # scheme://host:port[/prefix] without a trailing slash (WebSocket relay)
    timeout: aiohttp.ClientTimeout  # the WebSocket relay's handshake
    timeout_seconds: float  # to the response headers, and each pause between body chunks
    origin: Origin
    pool: Pool

    @classmethod
    def of(cls, name: str, upstream: Upstream) -> UpstreamTarget:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=upstream.connect_timeout_seconds,
            sock_read=upstream.timeout_seconds,
        )
        origin = Origin.of(upstream.url)
        pool = Pool(origin, upstream.connect_timeout_seconds)
        return cls(name, upstream.url.rstrip("/"), timeout, upstream.timeout_seconds, origin, pool)
