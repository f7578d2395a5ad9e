"""Hosts on one machine: each a Linux network namespace with its own address on one
bridge, running a real process — PostgreSQL, Redis, an upstream, three gateways and an
nginx balancer. The test process (the clients) reaches them through the bridge.

Needs root, iproute2, nginx, redis-server and PostgreSQL's server binaries; `reason()`
says which is missing."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.testing import stop

ROOT = Path(__file__).resolve().parents[2]
NET = "10.77.0"
BRIDGE = "gwc-br"
GATEWAYS = {"g1": f"{NET}.11", "g2": f"{NET}.12", "g3": f"{NET}.13"}
BALANCER, POSTGRES, REDIS, UPSTREAM = f"{NET}.10", f"{NET}.20", f"{NET}.21", f"{NET}.30"
STANDBY = f"{NET}.22"  # a streaming standby of POSTGRES, in a cluster built with one
# Redis hosts of a Sentinel or Cluster set-up: REDIS and these two.
REDIS_HOSTS = {"r1": REDIS, "r2": f"{NET}.23", "r3": f"{NET}.24"}
MASTER_NAME = "gateway"
ADMIN_TOKEN = "cluster-admin-token-0123456789"


def _redis_argv(address: str, port: int, directory: Path, cluster: bool = False) -> list[str]:
    """A redis-server's command line; what it writes (a replica's copy of its master's
    data, a Cluster's node table) goes to a directory of its own under `directory`."""
    data = directory / f"redis-{address}-{port}"
    data.mkdir(exist_ok=True)
    argv = ["redis-server", "--bind", address, "--port", str(port), "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", str(data)]  # fmt: skip
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                 "--cluster-config-file", str(data / "nodes.conf")]  # fmt: skip
    return argv


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    return found[0].parent if found else None


def reason() -> str | None:
    """Why the cluster cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "the cluster test needs root (network namespaces)"
    for tool in ("ip", "nginx", "redis-server", "redis-cli", "runuser"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return (
                f"the cluster test needs {tool} (apt-get install iproute2 nginx-light redis-server)"
            )
    if _postgres_bin() is None:
        return "the cluster test needs PostgreSQL's server binaries (apt-get install postgresql)"
    probe = subprocess.run(["ip", "netns", "add", "gwc-probe"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"network namespaces cannot be made here: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", "gwc-probe"], check=False)
    return None


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class Host:
    name: str
    address: str
    process: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    log: Path | None = None
    on: str | None = None  # another process on the host of that name (its namespace)

    @property
    def netns(self) -> str:
        return f"gwc-{self.on or self.name}"

    def start(self) -> None:
        assert self.log is not None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a host that dies without a word."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def run(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, check=False
        )


class Cluster:
    def __init__(
        self,
        workdir: Path,
        gateway_extra: dict[str, Any] | None = None,
        *,
        standby: bool = False,
        redis: str = "server",
    ) -> None:
        self.dir = workdir
        self.extra = gateway_extra or {}
        self.hosts: dict[str, Host] = {}
        self.standby = standby
        self.database_url = f"postgresql://postgres@{POSTGRES}:5432/postgres"
        if standby:  # as a team with a failover manager writes it
            self.database_url = (
                f"postgresql://postgres@{POSTGRES}:5432,{STANDBY}:5432/postgres"
                "?target_session_attrs=read-write"
            )
        self.pgroot: Path | None = None
        self.redis = redis  # server, sentinel or cluster
        nodes = ",".join(f"{address}:{26379 if redis == 'sentinel' else 6379}"
                         for address in REDIS_HOSTS.values())  # fmt: skip
        self.redis_url = {
            "server": f"redis://{REDIS}:6379/0",
            "sentinel": f"redis+sentinel://{nodes}/{MASTER_NAME}/0",
            "cluster": f"redis+cluster://{nodes}",
        }[redis]

    # ---- building ----------------------------------------------------------------

    def _network(self) -> None:
        self._teardown_network()
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")

    def _host(self, name: str, address: str) -> Host:
        host = Host(name, address, log=self.dir / f"{name}.log")
        ns, outside = host.netns, f"gwc-{name}-o"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", outside, "master", BRIDGE, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def _postgres(self) -> None:
        host = self._host("pg", POSTGRES)
        bindir = _postgres_bin()
        assert bindir is not None
        # Where the postgres user can reach it (pytest's directories are root's alone).
        self.pgroot = Path(tempfile.mkdtemp(prefix="gwc-pg-"))
        self.pgroot.chmod(0o755)
        data = self.pgroot / "data"
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data),
                        "-U", "postgres", "--auth=trust"], check=True, capture_output=True)  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {NET}.0/24 trust\nhost replication all {NET}.0/24 trust\n")
        host.argv = self._postgres_argv(data, POSTGRES)
        if self.standby:
            # Synchronous, as a team that must lose no committed write runs it (Patroni's
            # synchronous_mode): a commit waits until the standby has it.
            host.argv += ["-c", "synchronous_standby_names=*"]
        host.start()

    def _postgres_argv(self, data: Path, address: str) -> list[str]:
        bindir = _postgres_bin()
        assert bindir is not None
        return ["runuser", "-u", "postgres", "--", str(bindir / "postgres"), "-D", str(data),
                "-c", f"listen_addresses={address}", "-c", "unix_socket_directories=",
                "-c", "max_connections=200", "-c", "fsync=off"]  # fmt: skip

    def _standby(self) -> None:
        """A streaming standby, made as a failover manager makes one (`pg_basebackup -R`)."""
        host = self._host("pg2", STANDBY)
        bindir = _postgres_bin()
        assert bindir is not None and self.pgroot is not None
        data = self.pgroot / "standby"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        made = host.run("runuser", "-u", "postgres", "--", str(bindir / "pg_basebackup"),
                        "-h", POSTGRES, "-U", "postgres", "-D", str(data), "-R", "-X", "stream")  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"pg_basebackup: {made.stderr.decode().strip()}")
        host.argv = self._postgres_argv(data, STANDBY)
        host.start()
        self._wait_port(STANDBY, 5432)

    def promote(self) -> None:
        """Promote the standby, as a failover manager does once the primary is lost."""
        bindir = _postgres_bin()
        assert bindir is not None and self.pgroot is not None
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                        str(self.pgroot / "standby"), "-w", "promote"],
                       check=True, capture_output=True)  # fmt: skip

    def vanish(self, name: str) -> None:
        """The host dies and its address goes silent: its processes are killed, and
        nothing answers there any more, not even a reset."""
        host = self.hosts[name]
        assert host.run("ip", "link", "set", "eth0", "down").returncode == 0
        pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                              text=True, check=False).stdout.split()  # fmt: skip
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if host.process is not None:
            host.process.wait(10)

    def _redis(self) -> None:
        if self.redis == "sentinel":
            self._redis_sentinel()
        elif self.redis == "cluster":
            self._redis_cluster()
        else:
            host = self._host("redis", REDIS)
            host.argv = _redis_argv(REDIS, 6379, self.dir)
            host.start()

    def _process(self, name: str, on: str, argv: list[str]) -> Host:
        """Another process on the host `on` (its address, its namespace)."""
        process = Host(name, self.hosts[on].address, argv=argv, log=self.dir / f"{name}.log", on=on)
        self.hosts[name] = process
        process.start()
        return process

    def _redis_sentinel(self) -> None:
        """A master (r1), its replica (r2) and three Sentinels (r1, r2, r3), quorum 2."""
        for name, address in REDIS_HOSTS.items():
            self._host(name, address)
        master = REDIS_HOSTS["r1"]
        self.hosts["r1"].argv = _redis_argv(master, 6379, self.dir)
        self.hosts["r1"].start()
        self.hosts["r2"].argv = [
            *_redis_argv(REDIS_HOSTS["r2"], 6379, self.dir),
            "--replicaof",
            master,
            "6379",
        ]
        self.hosts["r2"].start()
        # The Sentinels learn of the replica from the master's INFO, every 10 s: start
        # them once it is in sync, so that the first one tells them.
        replica = f"{REDIS_HOSTS['r2']}:6379"
        self._until("the replica in sync", lambda: "master_link_status:up"
                    in self.redis_cli(replica, "info", "replication"))  # fmt: skip
        for name, address in REDIS_HOSTS.items():
            conf = self.dir / f"sentinel-{name}.conf"
            conf.write_text(
                f"port 26379\nbind {address}\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} {master} 6379 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            )
            self._process(f"sentinel-{name}", name, ["redis-server", str(conf), "--sentinel"])
        for address in REDIS_HOSTS.values():
            self._wait_port(address, 26379)

        def ready(sentinel: str) -> bool:
            said = self.redis_cli(f"{sentinel}:26379", "sentinel", "master", MASTER_NAME).split()
            fields = dict(zip(said[::2], said[1::2], strict=False))
            return fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"

        for address in REDIS_HOSTS.values():
            self._until(f"the Sentinel on {address} knowing the replica and the others",
                        functools.partial(ready, address))  # fmt: skip

    def _redis_cluster(self) -> None:
        """Three masters (port 6379 on r1, r2, r3), each with a replica on another host
        (port 6380), as `redis-cli --cluster create` places them."""
        for name, address in REDIS_HOSTS.items():
            host = self._host(name, address)
            host.argv = _redis_argv(address, 6379, self.dir, cluster=True)
            host.start()
            self._process(
                f"{name}-replica", name, _redis_argv(address, 6380, self.dir, cluster=True)
            )
        nodes = [f"{a}:{p}" for p in (6379, 6380) for a in REDIS_HOSTS.values()]
        for node in nodes:
            address, port = node.split(":")
            self._wait_port(address, int(port))
        made = subprocess.run(["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas",
                               "1", "--cluster-yes"], capture_output=True, text=True, check=False)  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create: {made.stdout[-500:]}{made.stderr}")
        self._until("the Redis Cluster serving every slot",
                    lambda: all(self.redis_cluster_ok(node) for node in nodes))  # fmt: skip

    def _until(self, what: str, done: Callable[[], bool], within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {within:g} s")
            time.sleep(0.2)

    def redis_cli(self, node: str, *argv: str) -> str:
        address, port = node.split(":")
        done = subprocess.run(["redis-cli", "-h", address, "-p", port, *argv],
                              capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        return done.stdout

    def redis_cluster_ok(self, node: str) -> bool:
        return "cluster_state:ok" in self.redis_cli(node, "cluster", "info")

    def _upstream(self) -> None:
        host = self._host("up", UPSTREAM)
        host.argv = [sys.executable, "-m", "tests.cluster.upstream", UPSTREAM, "9000"]
        host.start()

    def gateway_config(self, name: str) -> Path:
        address = GATEWAYS[name]
        policies = self.dir / "policies"
        config = {
            "state_dir": str(self.dir / f"state-{name}"),
            "listen": {"host": address, "port": 8080},
            "admin": {"host": address, "port": 8081},
            "database": {"url": self.database_url, "max_pool_size": 8},
            "policies": {"dir": str(policies)},
            "upstreams": {"core": {"url": f"http://{UPSTREAM}:9000"}},
            "rate_limiting": {
                "backend": "redis",
                "redis_url": self.redis_url,
                "on_backend_error": "local",
            },
            "trusted_proxies": [f"{BALANCER}/32"],
            "credits": {"lease_seconds": 6, "sync_interval_seconds": 0.5, "idle_seconds": 5},
            "shutdown": {"drain_seconds": 1, "timeout_seconds": 10},
            "webhooks": {
                "timeout_seconds": 1,
                "poll_seconds": 0.2,
                "retry_schedule_seconds": [0.5, 0.5, 0.5],
                "allowed_networks": [f"{NET}.0/24"],  # the receiver is on the cluster's net
            },
            **self.extra,
        }
        path = self.dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _gateways(self) -> None:
        policies = self.dir / "policies"
        policies.mkdir()
        (policies / "cluster.yaml").write_text(
            "upstream: core\nroutes:\n"
            "  - {methods: [GET], path: /v1/me, scopes: [me:read]}\n"
            "  - {methods: [GET], path: '/limited/{n}', scopes: [me:read], rate_limit: [per-key]}\n"
            "  - {methods: [GET], path: '/guarded/{n}', public: true, rate_limit: [per-ip]}\n"
            "  - {methods: [GET], path: '/orgs/{org}', scopes: [me:read],"
            " member_of: {organization: org}}\n"
            "rate_limits:\n"
            "  per-key: {limit: 20, per_seconds: 1, burst: 20, by: key}\n"
            "  per-ip: {limit: 5, per_seconds: 60, by: ip}\n"
        )
        env = {**os.environ, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONPATH": str(ROOT)}
        env.pop("GATEWAY_DATABASE_URL", None)
        for name, address in GATEWAYS.items():
            host = self._host(name, address)
            host.argv = ["env", *(f"{k}={v}" for k, v in env.items() if k in (
                "GATEWAY_ADMIN_TOKEN", "PYTHONPATH", "PATH")),
                sys.executable, "-m", "gateway", "serve", "--config", str(self.gateway_config(name))]  # fmt: skip

    def _balancer(self) -> None:
        host = self._host("lb", BALANCER)
        conf = self.dir / "nginx.conf"
        servers = "\n".join(
            f"    server {a}:8080 max_fails=1 fail_timeout=2s;" for a in GATEWAYS.values()
        )
        conf.write_text(f"""
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream gateways {{
{servers}
    keepalive 64;
  }}
  server {{
    listen {BALANCER}:80 reuseport;
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 1s;
    }}
  }}
}}
""")
        host.argv = ["nginx", "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"]
        host.start()

    def up(self) -> None:
        self._network()
        self._postgres()
        self._redis()
        self._upstream()
        self._wait_port(POSTGRES, 5432)
        if self.standby:
            self._standby()
        self._gateways()
        for name in GATEWAYS:
            self.hosts[name].start()
        for name in GATEWAYS:
            self.wait_ready(name)
        self._balancer()
        self._wait_port(BALANCER, 80)

    # ---- running -----------------------------------------------------------------

    def stop_postgres(self) -> None:
        """A fast shutdown, as `pg_ctl stop -m fast` does it (runuser does not pass
        signals on to the server)."""
        bindir, host = _postgres_bin(), self.hosts["pg"]
        assert bindir is not None and self.pgroot is not None and host.process is not None
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                        str(self.pgroot / "data"), "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)  # fmt: skip
        host.process.wait(30)

    def wait_ready(self, name: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        url = f"http://{GATEWAYS[name]}:8081/readyz"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            host = self.hosts[name]
            if host.process is not None and host.process.poll() is not None:
                raise RuntimeError(f"gateway {name} exited: see {host.log}")
            time.sleep(0.1)
        raise RuntimeError(
            f"gateway {name} not ready within {within} s: see {self.hosts[name].log}"
        )

    def _wait_port(self, address: str, port: int, within: float = 30) -> None:
        import socket

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((address, port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"nothing listens on {address}:{port}")

    # ---- tearing down ------------------------------------------------------------

    def down(self) -> None:
        # The gateways drain side by side, then what they depend on stops.
        gateways = [h.process for n, h in self.hosts.items() if n in GATEWAYS and h.process]
        stop(*gateways, timeout=10)
        for host in reversed(list(self.hosts.values())):
            host.stop(timeout=10)
        self._teardown_network()
        if self.pgroot is not None:
            shutil.rmtree(self.pgroot, ignore_errors=True)

    def _teardown_network(self) -> None:
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        )
        for line in listed.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith("gwc-"):
                subprocess.run(["ip", "netns", "pids", name], capture_output=True, check=False)
                pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                      text=True, check=False).stdout.split()  # fmt: skip
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        # A namespace outlives its deletion while a socket in it still retransmits to a
        # host that vanished; its veth pair goes with the outer end.
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                               check=False).stdout.splitlines()  # fmt: skip
        for line in links:
            name = line.split(": ")[1].split("@")[0] if ": " in line else ""
            if name.startswith("gwc-") and name.endswith("-o"):
                subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[Cluster]:
    built = Cluster(workdir)
    try:
        built.up()
        yield built
    finally:
        built.down()
