"""`make bench`: wrk against loopback, every contender measured in the same run, interleaved.

wrk and the upstream (nginx) share core 0; the proxy under test runs alone on core 1.
A front proxy in front of the gateway (nginx `auth_request`) runs on core 1 too, in
its own nginx process: a host that runs both pays for both on the same cores, the
core the naive proxy has alone. Ratios are against the naive aiohttp proxy measured
in the same round; the decision rows also against the bare pattern (`minimal_auth.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml

from gateway.keys import format as key_format
from gateway.testing import free_port, serving

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PY = sys.executable
ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 - a local benchmark's own token
BODIES = {"200B": 200, "64KiB": 65536}
POST_200B = OUT / "post_200b.lua"  # wrk: POST with a 200-byte body


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() != 1 else []


@contextmanager
def process(
    argv: list[str], log: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with (OUT / log).open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A private redis-server for the shared-limit row; None (row skipped) without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("bench: no redis-server (apt-get install redis-server): redis row skipped")
        yield None
        return
    port = free_port()
    argv = [*pin(0), binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]  # fmt: skip
    with process(argv, "redis.log"):
        time.sleep(0.3)
        yield f"redis://127.0.0.1:{port}/0"


def certificates() -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 (trustme), for the TLS rows."""
    import trustme

    where = OUT / "tls"
    where.mkdir(exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": where / "ca.pem", "cert": where / "cert.pem", "key": where / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return files


def nginx_conf(upstream_port: int, proxy_port: int, tls_port: int, tls: dict[str, Path]) -> Path:
    """The upstream (plain, and with TLS for the https-upstream row) and the plain
    `proxy_pass` row (core 0, with wrk)."""
    docroot = OUT / "www"
    for prefix in ("", "api/", "public/", "limited/", "jwt/", "secure/", "orgs/bench-org/"):
        (docroot / prefix).mkdir(parents=True, exist_ok=True)
        for name, size in BODIES.items():
            (docroot / prefix / name).write_bytes(b"x" * size)
    conf = OUT / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {OUT}/nginx.pid;
error_log {OUT}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  # A POST is answered with the file too (nginx's static module refuses it with 405).
  server {{ listen 127.0.0.1:{upstream_port}; root {docroot}; error_page 405 =200 $uri; }}
  server {{
    listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {tls["cert"]}; ssl_certificate_key {tls["key"]};
    root {docroot};
  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    return conf


def _auth_request_server(port: int, decider: str, upstream_port: int) -> str:
    """The README's auth_request configuration, with keep-alive to both sides."""
    return f"""
  upstream decider_{port} {{ server {decider}; keepalive 64; }}
  upstream origin_{port} {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /.gateway-decision;
      auth_request_set $gateway_user_id $upstream_http_x_gateway_user_id;
      auth_request_set $gateway_key_id  $upstream_http_x_gateway_key_id;
      auth_request_set $gateway_scopes  $upstream_http_x_gateway_scopes;
      auth_request_set $gateway_auth    $upstream_http_x_gateway_auth;
      auth_request_set $gateway_route   $upstream_http_x_gateway_route;
      auth_request_set $gateway_request $upstream_http_x_request_id;
      proxy_set_header X-Gateway-User-Id $gateway_user_id;
      proxy_set_header X-Gateway-Key-Id  $gateway_key_id;
      proxy_set_header X-Gateway-Scopes  $gateway_scopes;
      proxy_set_header X-Gateway-Auth    $gateway_auth;
      proxy_set_header X-Gateway-Route   $gateway_route;
      proxy_set_header X-Request-Id      $gateway_request;
      proxy_set_header Authorization     "";
      proxy_set_header X-API-Key         "";
      proxy_set_header Connection        "";
      proxy_http_version 1.1;
      proxy_pass http://origin_{port};
    }}
    location = /.gateway-decision {{
      internal;
      proxy_pass http://decider_{port}/decisions/auth-request;
      proxy_http_version 1.1;
      proxy_pass_request_body off;
      proxy_set_header Connection "";
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI    $request_uri;
      proxy_set_header X-Original-Host   $host;
      proxy_set_header X-Original-Proto  $scheme;
      proxy_set_header X-Original-IP     $remote_addr;
    }}
  }}
"""


def front_conf(upstream_port: int, fronts: dict[int, str]) -> Path:
    """The front nginx of the decision rows (its own process, on the gateway's core):
    listening port → the decider it asks."""
    servers = "".join(
        _auth_request_server(port, decider, upstream_port) for port, decider in fronts.items()
    )
    conf = OUT / "nginx-front.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {OUT}/nginx-front.pid;
error_log {OUT}/nginx-front-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{servers}
}}
""")
    return conf


def serve_on_core_1(
    config: Path, log: str, admin_port: int, env: dict[str, str], loop: str = "uvloop"
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A `gateway serve` under test: alone on core 1, with its log in `OUT`."""
    return serving(
        config,
        OUT / log,
        f"http://127.0.0.1:{admin_port}",
        args=["--loop", loop],
        env=env,
        prefix=pin(1),
    )


def wait_http(url: str, within: float = 30) -> None:
    async def probe() -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(url) as response:
                        if response.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise SystemExit(f"bench: {url} did not come up")

    asyncio.run(probe())


def wrk(
    url: str,
    connections: int,
    seconds: int,
    headers: dict[str, str],
    script: Path | None,
    pinned: bool = True,
) -> dict[str, float]:
    argv = [
        *(pin(0) if pinned else []),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script:
        argv += ["-s", str(script)]
    result = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
    return parse_wrk(result.stdout)


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if found is None:
            (OUT / "wrk-unparsed.txt").write_text(text)
            return float("nan")
        number, unit = found.groups()
        return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])  # type: ignore[index]
    # Anchored: "Req/Sec ... 68.99%" on the thread-stats line must not match.
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M)[1])  # type: ignore[index]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "non2xx": float(non2xx[1]) if non2xx else 0.0,
        "errors": 0.0 if not errors else float(sum(int(n) for n in re.findall(r"\d+", errors[1]))),
    }


async def seed(database_url: str, fresh: int) -> tuple[str, str, str, Path]:
    """One cached key, one with credits (more than any run spends), one under every key
    policy of §21, and `fresh` keys for the miss path (bulk-inserted, written to a Lua
    list)."""
    conn = await asyncpg.connect(database_url)
    try:
        cached, paying = key_format.generate("gwk"), key_format.generate("gwk")
        policed = await _policed_key(conn)
        await conn.execute(
            "INSERT INTO api_keys (id, key_hash, display_prefix, user_id, name, scopes,"
            " credits_remaining) VALUES ($1, $2, $3, 'bench-user', 'credits', $4, $5)",
            uuid.uuid4(),
            hashlib.sha256(paying.encode()).digest(),
            paying[:12],
            ["me:read"],
            10**12,
        )
        rows = [cached] + [key_format.generate("gwk") for _ in range(fresh)]
        await conn.copy_records_to_table(
            "api_keys",
            records=[
                (
                    uuid.uuid4(),
                    hashlib.sha256(k.encode()).digest(),
                    k[:12],
                    "bench-user",
                    "bench",
                    ["me:read", "actor_tokens:create"],
                )
                for k in rows
            ],
            columns=["id", "key_hash", "display_prefix", "user_id", "name", "scopes"],
        )
    finally:
        await conn.close()
    POST_200B.write_text(
        'wrk.method = "POST"\nwrk.body = string.rep("x", 200)\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    script = OUT / "fresh_keys.lua"
    listed = ",\n".join(f'"{k}"' for k in rows[1:])
    script.write_text(
        "local keys = {\n" + listed + "\n}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n  local k = keys[(i % #keys) + 1]\n"
        '  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. k})\nend\n'
    )
    return cached, paying, policed, script


async def _policed_key(conn: asyncpg.Connection) -> str:
    """A key with metadata and a 90-day expiry, of a user in an organization with a
    lifetime policy, spending the user's credit pool (§21's cost row)."""
    policed = key_format.generate("gwk")
    await conn.execute(
        "INSERT INTO api_keys (id, key_hash, display_prefix, user_id, name, scopes, meta,"
        " expires_at) VALUES ($1, $2, $3, 'bench-policy', 'policed', $4,"
        ' \'{"plan": "pro", "account": "acme-4711"}\', now() + interval \'90 days\')',
        uuid.uuid4(),
        hashlib.sha256(policed.encode()).digest(),
        policed[:12],
        ["me:read"],
    )
    await conn.execute(
        "INSERT INTO memberships (user_id, resource_type, resource_id)"
        " VALUES ('bench-policy', 'organization', 'bench-org');"
        "INSERT INTO organization_key_policies (organization, max_lifetime_days)"
        " VALUES ('bench-org', 365);"
        "INSERT INTO user_credits (user_id, credits_remaining) VALUES ('bench-policy', 1e12)"
    )
    return policed


async def mint(proxy: str, key: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy + "/auth/actor-tokens",
            json={"ttl_seconds": 3600},  # outlives the rounds (`tokens` in the config)
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        return str((await r.json())["access_token"])


def gateway_config(
    database_url: str,
    upstream_port: int,
    proxy_port: int,
    admin_port: int,
    name: str,
    decisions_port: int | None = None,
    redis_url: str | None = None,
    *,
    https_upstream: tuple[int, Path],
    tls_listener: dict[str, Path] | None = None,
    traces_to: str | None = None,
    key_policy: dict[str, Any] | None = None,
) -> Path:
    policies = OUT / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "bench.yaml").write_text(
        "upstream: origin\nroutes:\n"
        "  - {name: public, methods: [GET], path: '/public/{rest...}', public: true}\n"
        "  - {name: api, methods: [GET, POST], path: '/api/{rest...}', scopes: [me:read]}\n"
        # The same route with one by-key limit that never refuses, and with a signed identity.
        "  - {name: limited, methods: [GET], path: '/limited/{rest...}', scopes: [me:read],"
        " rate_limit: [roomy]}\n"
        "  - {name: signed, methods: [GET], path: '/jwt/{rest...}', scopes: [me:read],"
        " identity: jwt}\n"
        "  - {name: secure, methods: [GET], path: '/secure/{rest...}', scopes: [me:read],"
        " upstream: origin-tls}\n"
        # An organization's route: the membership check, and its lifetime policy (§21).
        "  - {name: member, methods: [GET], path: '/orgs/{org}/{rest...}', scopes: [me:read],"
        " member_of: {organization: org}}\n"
        "rate_limits:\n"
        "  roomy: {limit: 1000000, per_seconds: 1, by: key}\n"
    )
    config: dict[str, Any] = {
        "state_dir": str(OUT / "state"),
        "listen": {"host": "127.0.0.1", "port": proxy_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "database": {"url": database_url},
        "policies": {"dir": str(policies), "reload": False},
        "upstreams": {
            "origin": {"url": f"http://127.0.0.1:{upstream_port}"},
            "origin-tls": {
                "url": f"https://127.0.0.1:{https_upstream[0]}",
                "tls": {"ca_file": str(https_upstream[1])},
            },
        },
        "cache": {"ttl_seconds": 600},
        "tokens": {"max_ttl_seconds": 3600},
    }
    if tls_listener is not None:
        files = {"cert_file": str(tls_listener["cert"]), "key_file": str(tls_listener["key"])}
        config["listen"] = {**config["listen"], "tls": files}
    if traces_to is not None:
        config["tracing"] = {"enabled": True, "otlp_endpoint": traces_to, "sample_ratio": 0.01}
    if key_policy is not None:
        config["key_policy"] = key_policy
    if decisions_port is not None:
        config["decisions"] = {"enabled": True, "listen": {"port": decisions_port}}
    if redis_url is not None:
        config["rate_limiting"] = {"backend": "redis", "redis_url": redis_url}
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--soak-seconds", type=int, default=60, help="RSS check; 0 skips it")
    parser.add_argument("--database-url", default=os.environ.get("GATEWAY_DATABASE_URL"))
    parser.add_argument(
        "--workers", type=int, default=0, help="also measure serve --workers N on both cores"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated substrings of row names (yardsticks kept)"
    )
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with scratch_database(args.database_url, "bench") as database_url:
        run(args, database_url)


@contextmanager
def scratch_database(server_url: str | None, tag: str) -> Iterator[str]:
    """A database of the run's own on that server (the embedded one when none), dropped
    afterwards."""
    if not server_url:
        from gateway.foundation.database import start_embedded

        server_url = start_embedded(OUT / "pgdata", cleanup_mode="stop")
    name = f"gw_{tag}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name}"))
    try:
        yield _with_db(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute(sql)
    await conn.close()


def _with_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def run(args: argparse.Namespace, database_url: str) -> None:
    upstream_port, nginx_proxy_port, naive_port = free_port(), free_port(), free_port()
    gw_port, admin_port = free_port(), free_port()
    uv_port, uv_admin_port = free_port(), free_port()
    auth_port, decisions_port, naive_uv_port = free_port(), free_port(), free_port()
    reference_port, minimal_auth_port = free_port(), free_port()
    tls_upstream_port, tls_port, tls_admin_port = free_port(), free_port(), free_port()
    traced_port, traced_admin_port, collector_port = free_port(), free_port(), free_port()
    policy_port, policy_admin_port = free_port(), free_port()
    notice_port, notice_admin_port = free_port(), free_port()
    control_port, control_admin_port = free_port(), free_port()
    tls = certificates()
    conf = nginx_conf(upstream_port, nginx_proxy_port, tls_upstream_port, tls)
    https_upstream = (tls_upstream_port, tls["ca"])
    front = front_conf(
        upstream_port,
        {
            auth_port: f"127.0.0.1:{decisions_port}",
            reference_port: f"127.0.0.1:{minimal_auth_port}",
        },
    )
    config = gateway_config(
        database_url, upstream_port, gw_port, admin_port, "gateway", https_upstream=https_upstream
    )
    uv_config = gateway_config(
        database_url, upstream_port, uv_port, uv_admin_port, "gateway-uvloop", decisions_port,
        https_upstream=https_upstream,
    )  # fmt: skip
    tls_config = gateway_config(
        database_url, upstream_port, tls_port, tls_admin_port, "gateway-tls",
        https_upstream=https_upstream, tls_listener=tls,
    )  # fmt: skip
    traced_config = gateway_config(
        database_url, upstream_port, traced_port, traced_admin_port, "gateway-traced",
        https_upstream=https_upstream, traces_to=f"http://127.0.0.1:{collector_port}/v1/traces",
    )  # fmt: skip
    policy_config = gateway_config(
        database_url, upstream_port, policy_port, policy_admin_port, "gateway-key-policy",
        https_upstream=https_upstream,
        key_policy={"max_lifetime_days": 3650, "new_network_notice": {"enabled": True}},
    )  # fmt: skip
    # The notice alone, for the cached key (which has no expiry: the limit would block it).
    notice_config = gateway_config(
        database_url, upstream_port, notice_port, notice_admin_port, "gateway-notice",
        https_upstream=https_upstream, key_policy={"new_network_notice": {"enabled": True}},
    )  # fmt: skip
    # A second process configured as the plain one: what the ratio of two identical
    # rows is on this machine, the yardstick for small differences (the notice's 2 %).
    control_config = gateway_config(
        database_url, upstream_port, control_port, control_admin_port, "gateway-control",
        https_upstream=https_upstream,
    )  # fmt: skip
    # The configuration file names the bench database; the environment must not override it.
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_DATABASE_URL"}
    env["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    subprocess.run(
        [PY, "-m", "gateway", "migrate", "--config", str(config)],
        check=True,
        env=env,
        capture_output=True,
    )
    cached, paying, policed, fresh_script = asyncio.run(seed(database_url, 40_000))
    with (
        process([*pin(0), "nginx", "-c", str(conf)], "nginx.log"),
        process([*pin(1), "nginx", "-c", str(front)], "nginx-front.log"),
        process(
            [*pin(1), PY, str(HERE / "minimal_auth.py"), str(minimal_auth_port), cached],
            "minimal-auth.log",
        ) as minimal_auth,
        process(
            [
                *pin(1),
                PY,
                str(HERE / "naive_proxy.py"),
                str(naive_port),
                f"http://127.0.0.1:{upstream_port}",
            ],
            "naive.log",
        ) as naive,
        process(
            [
                *pin(1),
                PY,
                str(HERE / "naive_proxy.py"),
                str(naive_uv_port),
                f"http://127.0.0.1:{upstream_port}",
                "uvloop",
            ],
            "naive-uvloop.log",
        ) as naive_uv,
        serve_on_core_1(config, "gateway.log", admin_port, env, "asyncio") as gateway,
        serve_on_core_1(uv_config, "gateway-uvloop.log", uv_admin_port, env) as gateway_uv,
        serve_on_core_1(tls_config, "gateway-tls.log", tls_admin_port, env) as gateway_tls,
        # The collector runs beside wrk (core 0), as it would on another host.
        process(
            [*pin(0), PY, str(ROOT / "tests" / "otlpreceiver.py"), str(collector_port)],
            "otlp-collector.log",
        ),
        serve_on_core_1(
            traced_config, "gateway-traced.log", traced_admin_port, env
        ) as gateway_traced,
        serve_on_core_1(
            policy_config, "gateway-key-policy.log", policy_admin_port, env
        ) as gateway_policy,
        serve_on_core_1(
            notice_config, "gateway-notice.log", notice_admin_port, env
        ) as gateway_notice,
        serve_on_core_1(
            control_config, "gateway-control.log", control_admin_port, env
        ) as gateway_control,
        contextlib.ExitStack() as extras,
    ):
        for port in (upstream_port, naive_port, naive_uv_port, reference_port):
            wait_http(f"http://127.0.0.1:{port}/public/200B")
        token = asyncio.run(mint(f"http://127.0.0.1:{gw_port}", cached))
        auth = {"Authorization": f"Bearer {cached}"}
        targets: dict[str, tuple[int, str, dict[str, str], Path | None]] = {
            "nginx direct": (upstream_port, "/", {}, None),
            "nginx proxy_pass": (nginx_proxy_port, "/", {}, None),
            "naive aiohttp proxy": (naive_port, "/", {}, None),
            "naive aiohttp proxy, uvloop": (naive_uv_port, "/", {}, None),
            "gateway public route, asyncio": (gw_port, "/public/", {}, None),
            "gateway cached API key, asyncio": (gw_port, "/api/", auth, None),
            "gateway actor token, asyncio": (
                gw_port,
                "/api/",
                {"Authorization": f"Bearer {token}"},
                None,
            ),
            "gateway cached API key, uvloop (default)": (uv_port, "/api/", auth, None),
            # A request body of 200 B: read whole before the upstream is asked (§6.1).
            "gateway cached API key, POST 200 B body, asyncio": (gw_port, "/api/", auth, POST_200B),
            "naive aiohttp proxy, POST 200 B body": (naive_port, "/", {}, POST_200B),
            "gateway cached key + by-key limit (local), uvloop": (uv_port, "/limited/", auth, None),
            "gateway cached key with credits, uvloop": (
                uv_port,
                "/api/",
                {"Authorization": f"Bearer {paying}"},
                None,
            ),
            "gateway cached key + identity jwt, uvloop": (uv_port, "/jwt/", auth, None),
            TLS_LISTENER: (tls_port, "/api/", auth, None),
            HTTPS_UPSTREAM: (uv_port, "/secure/", auth, None),
            TRACED: (traced_port, "/api/", auth, None),
            KEY_POLICY: (
                policy_port,
                "/orgs/bench-org/",
                {"Authorization": f"Bearer {policed}"},
                None,
            ),
            NOTICE: (notice_port, "/api/", auth, None),
            CONTROL: (control_port, "/api/", auth, None),
            # nginx on the gateway's core in front of each decider, same configuration.
            "nginx auth_request + gateway decision, uvloop": (auth_port, "/api/", auth, None),
            "nginx auth_request + minimal auth service, uvloop (reference)": (
                reference_port,
                "/api/",
                auth,
                None,
            ),
            # The decision alone: what one gateway process decides per second.
            "gateway decisions alone (forward-auth), uvloop": (
                decisions_port,
                "/decisions/forward-auth",
                {**auth, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/200B"},
                None,
            ),
            MINIMAL_ALONE: (
                minimal_auth_port,
                "/decisions/auth-request",
                {**auth, "X-Original-Method": "GET", "X-Original-URI": "/api/200B"},
                None,
            ),
        }
        # Whose CPU time a row measures (nginx's own rows: none).
        pids = {
            "naive aiohttp proxy": naive.pid,
            "naive aiohttp proxy, uvloop": naive_uv.pid,
            "gateway cached API key, uvloop (default)": gateway_uv.pid,
        }
        pids[TLS_LISTENER] = gateway_tls.pid
        # The reference's CPU is its decider's (the front nginx's is in neither row).
        pids[REFERENCE] = pids[MINIMAL_ALONE] = minimal_auth.pid
        pids[TRACED] = gateway_traced.pid
        pids[KEY_POLICY], pids[NOTICE] = gateway_policy.pid, gateway_notice.pid
        pids[CONTROL] = gateway_control.pid
        for name in targets:
            if name in pids:
                continue
            if name.startswith("gateway") and "uvloop" not in name:
                pids[name] = gateway.pid
            elif name.startswith("gateway") or "gateway decision" in name:
                pids[name] = gateway_uv.pid
        redis_url = extras.enter_context(redis_server())
        if redis_url is not None:
            rd_port, rd_admin = free_port(), free_port()
            rd_config = gateway_config(
                database_url, upstream_port, rd_port, rd_admin, "gateway-redis",
                redis_url=redis_url, https_upstream=https_upstream,
            )  # fmt: skip
            rd = extras.enter_context(
                serve_on_core_1(rd_config, "gateway-redis.log", rd_admin, env)
            )
            name = "gateway cached key + by-key limit (redis), uvloop"
            targets[name] = (rd_port, "/limited/", auth, None)
            pids[name] = rd.pid
        if args.only:
            wanted = [w.strip() for w in args.only.split(",")]
            for name in list(targets):
                if not name.startswith("naive") and not any(w in name for w in wanted):
                    del targets[name]
        results: dict[tuple[str, int, str], list[dict[str, float]]] = {}

        def measure(name: str, connections: int, body: str) -> None:
            port, prefix, headers, script = targets[name]
            fixed = prefix.startswith("/decisions/")
            scheme = "https" if name == TLS_LISTENER else "http"
            url = f"{scheme}://127.0.0.1:{port}{prefix}{'' if fixed else body}"
            cpu_before = cpu_seconds(pids.get(name))
            measured = wrk(url, connections, args.seconds, headers, script)
            used = cpu_seconds(pids.get(name)) - cpu_before
            done = measured["rps"] * args.seconds
            measured["cpu_us"] = used / done * 1e6 if pids.get(name) and done else 0.0
            results.setdefault((name, connections, body), []).append(measured)
            print(
                f"c={connections} {body:>5} {name:<48} {measured['rps']:>9.0f} req/s p50 {measured['p50']:.2f} ms",
                flush=True,
            )

        connection_counts = [int(c) for c in args.connections.split(",")]
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}", flush=True)
            for connections in connection_counts:
                for body in BODIES:
                    for name, (_, prefix, _, _) in targets.items():
                        if prefix.startswith("/decisions/") and body != "200B":
                            continue  # a decision has no body to vary
                        measure(name, connections, body)
        # Last, once: each fresh key misses only once, and the run leaves 40,000 keys in
        # that process's caches and a vacuum to PostgreSQL, which the rounds above must
        # not share a core with. Then the cached key again, over that larger heap.
        targets["gateway fresh key (miss), asyncio"] = (gw_port, "/api/", {}, fresh_script)
        targets["gateway cached API key after 40,000 misses, asyncio"] = (
            gw_port,
            "/api/",
            auth,
            None,
        )
        for name in list(targets)[-2:]:
            if args.only and not any(w in name for w in args.only.split(",")):
                continue
            pids[name] = gateway.pid
            once = name.startswith("gateway fresh key")
            for connections in connection_counts[:1] if once else connection_counts:
                measure(name, connections, "200B")
        soak = rss_soak(gateway_uv.pid, uv_port, auth, args.soak_seconds)
    report(results, args, soak)
    if args.workers:
        workers_scaling(args, database_url, cached, env, conf, upstream_port, https_upstream)


def workers_scaling(
    args: argparse.Namespace,
    database_url: str,
    key: str,
    env: dict[str, str],
    conf: Path,
    upstream_port: int,
    https_upstream: tuple[int, Path],
) -> None:
    """`serve --workers N` on both cores against one worker; wrk unpinned, noted as such."""
    rates = {}
    with process(["nginx", "-c", str(conf)], "nginx-workers.log"):
        for workers in (1, args.workers):
            port, admin = free_port(), free_port()
            config = gateway_config(
                database_url, upstream_port, port, admin, f"workers{workers}",
                https_upstream=https_upstream,
            )  # fmt: skip
            with serving(
                config,
                OUT / f"workers{workers}.log",
                f"http://127.0.0.1:{admin}",
                args=["--workers", str(workers)],
                env=env,
            ):
                url = f"http://127.0.0.1:{port}/api/200B"
                auth = {"Authorization": f"Bearer {key}"}
                rates[workers] = wrk(url, 64, args.seconds, auth, None, pinned=False)["rps"]
    line = (
        f"serve --workers {args.workers}: {rates[args.workers]:,.0f} req/s against one worker's "
        f"{rates[1]:,.0f} req/s = {rates[args.workers] / rates[1]:.2f}x (wrk unpinned on the same "
        "2 cores, 64 connections, cached key, 200 B)"
    )
    print(line)
    with (HERE / "RESULTS.md").open("a") as out:
        out.write(f"\n{line}\n")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (from /proc), 0 when not measured."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_soak(pid: int, port: int, headers: dict[str, str], seconds: int) -> str:
    """RSS of the default gateway before and after a long run at 64 connections."""
    if seconds <= 0:
        return ""
    url = f"http://127.0.0.1:{port}/api/200B"
    wrk(url, 64, 5, headers, None)  # warm: caches and pools at their working size
    before = rss_mib(pid)
    measured = wrk(url, 64, seconds, headers, None)
    after = rss_mib(pid)
    line = (
        f"RSS of the default gateway (uvloop) over a {seconds} s run at 64 connections, cached "
        f"key, 200 B: {before:.1f} MiB -> {after:.1f} MiB ({measured['rps']:,.0f} req/s, "
        f"{int(measured['non2xx'] + measured['errors'])} failed)"
    )
    print(line, flush=True)
    return line


GATEWAY_DECISION = "nginx auth_request + gateway decision, uvloop"
CACHED_UVLOOP = "gateway cached API key, uvloop (default)"
TLS_LISTENER = "gateway cached API key, TLS listener, uvloop"
HTTPS_UPSTREAM = "gateway cached API key, https upstream, uvloop"
TRACED = "gateway cached API key, tracing at 0.01, uvloop"
REFERENCE = "nginx auth_request + minimal auth service, uvloop (reference)"
KEY_POLICY = "gateway cached key, meta + lifetimes + member_of + user pool + notice, uvloop"
NOTICE = "gateway cached API key, new-network notice on, uvloop"
CONTROL = "gateway cached API key, uvloop, control (a second identical process)"
MINIMAL_ALONE = "minimal auth service alone, uvloop"


# Same-run ratios the issues set targets for: (row, against, what it says).
COMPARED = (
    (
        GATEWAY_DECISION,
        REFERENCE,
        "nginx auth_request + gateway decision vs the minimal auth service",
    ),
    (
        "gateway cached key with credits, uvloop",
        "gateway cached API key, uvloop (default)",
        "a key with credits vs the same key without",
    ),
    (
        "gateway cached key + by-key limit (local), uvloop",
        "gateway cached API key, uvloop (default)",
        "a by-key limit vs the same route unlimited",
    ),
    (
        "gateway decisions alone (forward-auth), uvloop",
        MINIMAL_ALONE,
        "gateway decisions alone vs the minimal auth service alone",
    ),
    (TLS_LISTENER, CACHED_UVLOOP, "TLS on the proxy listener vs plain"),
    (HTTPS_UPSTREAM, CACHED_UVLOOP, "an https upstream vs plain"),
    (TRACED, CACHED_UVLOOP, "tracing at ratio 0.01 vs tracing off"),
    (KEY_POLICY, CACHED_UVLOOP, "§21 all at once (goal ≥ 0.95) vs a plain cached key"),
    (NOTICE, CACHED_UVLOOP, "the new-network notice on (goal ≥ 0.98) vs off"),
    (CONTROL, CACHED_UVLOOP, "control: a second identical process vs the first"),
)


def _against_reference(results: dict[tuple[str, int, str], list[dict[str, float]]]) -> list[str]:
    """The rows of `COMPARED` against theirs, per cell."""
    out = []
    for row, against, said in COMPARED:
        for (name, connections, body), runs in results.items():
            reference = results.get((against, connections, body))
            if name != row or not reference:
                continue
            # Paired by round (the two ran minutes apart at most, on the same machine
            # state): the median of the rounds' ratios, and their spread.
            ratios = sorted(r["rps"] / t["rps"] for r, t in zip(runs, reference, strict=False))
            spread = f" (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            median = statistics.median(ratios)
            out.append(f"{said}, {connections} connections, {body}: {median:.2f}x{spread}")
    return out


def report(
    results: dict[tuple[str, int, str], list[dict[str, float]]],
    args: argparse.Namespace,
    soak: str = "",
) -> None:
    lines = [
        f"wrk -t1, {args.seconds} s per run, {args.rounds} interleaved rounds (median shown); "
        "wrk + nginx on core 0, the proxy under test alone on core 1. "
        "Ratio = req/s against the naive aiohttp proxy on the same event loop (asyncio or "
        "uvloop) at the same connections and body. CPU = CPU time of the measured process "
        "per request (from /proc): the decider's in the front-nginx rows (the front nginx's "
        "is in neither), none in nginx's own rows. The fresh-key row (40,000 "
        "keys, each missing once) and the cached key after it run once, after the rounds.",
        "",
        "| contender | conns | body | req/s | p50 ms | p99 ms | vs naive | CPU µs/req | failed |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, connections, body), runs in results.items():
        yardstick = "naive aiohttp proxy, uvloop" if "uvloop" in name else "naive aiohttp proxy"
        rps = statistics.median(r["rps"] for r in runs)
        naive = statistics.median(r["rps"] for r in results[(yardstick, connections, body)])
        cpu = statistics.median(r.get("cpu_us", 0.0) for r in runs)
        failed = int(sum(r["non2xx"] + r["errors"] for r in runs))
        lines.append(
            f"| {name} | {connections} | {body} | {rps:,.0f}"
            f" | {statistics.median(r['p50'] for r in runs):.2f}"
            f" | {statistics.median(r['p99'] for r in runs):.2f} | {rps / naive:.2f}x"
            f" | {f'{cpu:.0f}' if cpu else '-'} | {failed} |"
        )
    lines += ["", *_against_reference(results)]
    table = "\n".join(lines)
    print("\n" + table)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    extra = f"\n{soak}\n" if soak else ""
    # Each run is added at the top, below the title: RESULTS.md is the history of runs.
    history_file = HERE / "RESULTS.md"
    title, _, history = (
        history_file.read_text().partition("\n") if history_file.exists() else ("", "", "")
    )
    run = f"## Run of {stamp}\n\n{table}\n{extra}"
    history_file.write_text(f"{title or '# Benchmark results'}\n\n{run}\n{history.lstrip()}")


if __name__ == "__main__":
    main()
