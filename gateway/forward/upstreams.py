"""Where routes forward to: each configured upstream, its timeouts and its connection pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.forward.client import Origin, Pool
from gateway.foundation.config import Upstream
from gateway.tls.contexts import Resolver, upstream_context


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    name: str
    base: str  # scheme://host:port[/prefix] without a trailing slash (the upstream span)
    connect_timeout_seconds: float  # a WebSocket relay's own connection
    timeout_seconds: float  # to the response headers, and each pause between body chunks
    origin: Origin
    pool: Pool

    @classmethod
    def of(cls, name: str, upstream: Upstream, resolve: Resolver | None = None) -> UpstreamTarget:
        """`resolve` makes the TLS files' paths absolute (`Config.resolve`)."""
        context = None
        if upstream.url.startswith("https://"):
            context = upstream_context(f"upstreams.{name}.tls", upstream.tls, resolve or Path)
        server_name = upstream.tls.server_name if upstream.tls is not None else None
        origin = Origin.of(upstream.url, context, server_name)
        pool = Pool(origin, upstream.connect_timeout_seconds)
        return cls(
            name, upstream.url.rstrip("/"), upstream.connect_timeout_seconds,
            upstream.timeout_seconds, origin, pool,
        )  # fmt: skip
