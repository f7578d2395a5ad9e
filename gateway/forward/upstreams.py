"""Where routes forward to: each configured upstream, with its timeouts."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from gateway.config import Upstream


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    name: str
    base: str  # scheme://host:port[/prefix] without a trailing slash
    timeout: aiohttp.ClientTimeout

    @classmethod
    def of(cls, name: str, upstream: Upstream) -> UpstreamTarget:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=upstream.connect_timeout_seconds,
            sock_read=upstream.timeout_seconds,
        )
        return cls(name, upstream.url.rstrip("/"), timeout)
