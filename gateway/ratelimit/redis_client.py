"""The redis-py client for `rate_limiting.redis_url`: one server, the master a set of
Sentinels names (followed across a failover: each new connection asks them), or a
Cluster (its slot map refreshed when a node is lost)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.foundation.redis_urls import parse

RedisClient = aioredis.Redis | RedisCluster


def client_for(url: str, timeout: float) -> RedisClient:
    """A client whose every connect and reply waits at most `timeout`: a lost server
    must fail fast into `on_backend_error`."""
    target = parse(url)
    # redis-py retries three times with backoff from 1 s to 10 s by default: a Sentinel
    # failover (a new master 2.6 s after the old one went) was followed 15 s later. The
    # gateway retries by itself, every sync interval; one retry at once here covers a
    # connection the server closed (it restarted, or a Cluster moved a slot).
    waits: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
    }
    if target.kind == "server":
        return aioredis.Redis.from_url(url, **waits)
    login: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.kind == "sentinel":
        # A Sentinel that does not answer is skipped for the next one, not retried.
        asking = {**waits, "retry": Retry(NoBackoff(), 0), "ssl": target.tls}
        sentinels = Sentinel(list(target.nodes), sentinel_kwargs=asking, **waits)  # type: ignore[no-untyped-call]
        master: aioredis.Redis = sentinels.master_for(
            target.master, db=target.db, ssl=target.tls, **login
        )
        return master
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        ssl=target.tls,
        **login,
        **waits,
    )


async def drop_idle_connections(client: RedisClient) -> None:
    """Close pooled connections that are not in use (a restarted server closed them:
    each would fail once). A Cluster client reconnects, and maps its slots again, by
    itself."""
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect(inuse_connections=False)
