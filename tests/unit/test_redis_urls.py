"""`rate_limiting.redis_url`: one server, a Sentinel-watched master or a Cluster (§22)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.foundation.config import ConfigError, load
from gateway.foundation.redis_urls import RedisTarget, parse
from gateway.ratelimit.redis_client import client_for


def test_sentinels_a_master_name_and_a_database() -> None:
    assert parse("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/2") == RedisTarget(
        "sentinel",
        "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/2",
        nodes=(("s1", 26379), ("s2", 26379), ("::1", 26380)),
        master="mymaster",
        db=2,
        password="pw",
    )


def test_cluster_nodes_with_credentials_and_tls() -> None:
    target = parse("rediss+cluster://gw:s%40cret@n1:7000,n2")
    assert target.kind == "cluster" and target.tls
    assert target.nodes == (("n1", 7000), ("n2", 6379))
    assert (target.username, target.password) == ("gw", "s@cret")


def test_one_server_is_left_to_redis_py() -> None:
    assert parse("redis://localhost:6379/0").kind == "server"
    assert parse("unix:///run/redis.sock").kind == "server"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://redis:6379", "the scheme must be one of"),
        ("redis+sentinel://s1,s2", "name the master"),
        ("redis+sentinel://s1/mymaster/x", "the database is a number"),
        ("redis+cluster://n1/3", "database 0 only"),
        ("redis+cluster://n1:port", "the port must be a number"),
        ("redis+cluster://n1:70000", "the port must be a number"),
        ("redis+cluster://,n2", "a host is missing"),
    ],
)
def test_a_bad_url_is_a_load_error_naming_the_key(tmp_path: Path, url: str, message: str) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(f"rate_limiting: {{backend: redis, redis_url: '{url}'}}\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, {})
    assert "rate_limiting.redis_url: " in str(caught.value) and message in str(caught.value)
    assert "pw" not in str(caught.value)


async def test_each_kind_gets_redis_pys_own_client() -> None:
    """No connection is made until the first command."""
    assert type(client_for("redis://127.0.0.1:6379/0", 0.25)) is Redis
    master = client_for("redis+sentinel://127.0.0.1:26379/mymaster/1", 0.25)
    assert isinstance(master, Redis) and isinstance(master.connection_pool, SentinelConnectionPool)
    assert master.connection_pool.connection_kwargs["db"] == 1
    assert isinstance(client_for("redis+cluster://127.0.0.1:7000", 0.25), RedisCluster)
