"""`rate_limiting.redis_url`: one server, a Sentinel-watched master, or a Cluster.

- `redis://[[user]:password@]host:6379/0` (`rediss://` for TLS, `unix://` for a
  socket): one server, as redis-py reads it;
- `redis+sentinel://[[user]:password@]s1:26379,s2:26379,s3:26379/mymaster/0`: the
  master Sentinel names `mymaster`, database 0; the credentials are the master's;
- `redis+cluster://[[user]:password@]n1:6379,n2:6379,n3:6379`: a Cluster, found
  from any of the nodes named (database 0 only, as Cluster has no other).

`rediss+sentinel://` and `rediss+cluster://` speak TLS to the servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

Kind = Literal["server", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"server": 6379, "sentinel": 26379, "cluster": 6379}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # Sentinels, or Cluster nodes to start from
    master: str = ""  # the name Sentinel knows the master by
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse(url: str) -> RedisTarget:
    """The target a URL names; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        known = ", ".join(f"{scheme}://" for scheme in _SCHEMES)
        raise ValueError(f"the scheme must be one of {known}")
    kind, tls = _SCHEMES[parts.scheme]
    if kind == "server":
        return RedisTarget("server", url, tls=tls)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = tuple(_node(entry, _DEFAULT_PORT[kind]) for entry in hostlist.split(","))
    names = [segment for segment in parts.path.split("/") if segment]
    master, db = "", 0
    if kind == "sentinel":
        if not names:
            raise ValueError("name the master after the Sentinels: …/mymaster/0")
        master = unquote(names[0])
        db = _db(names[1:])
    elif _db(names) != 0:
        raise ValueError("a Redis Cluster has database 0 only")
    return RedisTarget(
        kind,
        url,
        nodes,
        master,
        db,
        unquote(user) or None,
        unquote(password) or None,
        tls,
    )


def _node(entry: str, default_port: int) -> tuple[str, int]:
    """`host[:port]`, `[v6]:port` or a bare address."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    if not host:
        raise ValueError("a host is missing (host:port,host:port)")
    if (port and not port.isdigit()) or not 0 < int(port or default_port) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return host, int(port or default_port)


def _db(names: list[str]) -> int:
    if not names:
        return 0
    if len(names) > 1 or not names[0].isdigit():
        raise ValueError("the database is a number: …/0")
    return int(names[0])
