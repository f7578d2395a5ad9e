"""Real `gateway serve` processes sharing one database: instant revocation, workers, CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import yaml

from gateway.testing import environment, free_port, spawn_serve, stop, wait_ready
from tests.support import ADMIN_TOKEN, ROOT, RecordingUpstream, admin_headers, bearer, unique


def _write_config(
    tmp_path: Path, name: str, database_url: str, upstream_url: str, **extra: object
) -> tuple[Path, int, int]:
    proxy_port, admin_port = free_port(), free_port()
    config = {
        "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": proxy_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "database": {"url": database_url},
        "policies": {"dir": str(ROOT / "policies")},
        "upstreams": {"core": {"url": upstream_url}},
        "shutdown": {"drain_seconds": 0},  # the drain has its own tests (test_shutdown)
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, proxy_port, admin_port


def _env() -> dict[str, str]:
    return environment(GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, PYTHONUNBUFFERED="1")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    stop(*processes, timeout=10)


def _serve(config: Path, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return spawn_serve(config, tmp_path / f"{config.stem}.log", args=extra, env=_env())


async def _ready(admin_port: int) -> None:
    await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{admin_port}", None, 20)


async def _revoked_within(http: aiohttp.ClientSession, url: str, key: str, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        async with http.get(url, headers=bearer(key)) as response:
            if response.status == 401:
                return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"still accepted after {seconds} s")


async def test_revocation_through_one_process_reaches_the_other_within_a_second(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    first, _, a1 = _write_config(tmp_path, "one", database_url, upstream.url)
    second, p2, a2 = _write_config(tmp_path, "two", database_url, upstream.url)
    spawn += [_serve(first, tmp_path), _serve(second, tmp_path)]
    async with aiohttp.ClientSession() as http:
        await _ready(a1)
        await _ready(a2)
        user = unique("user")
        create = {"user_id": user, "name": "x", "scopes": ["me:read"]}
        for attempt in range(2):
            async with http.post(
                f"http://127.0.0.1:{a1}/admin/v1/keys", json=create, headers=admin_headers()
            ) as r:
                key = await r.json()
            async with http.get(f"http://127.0.0.1:{p2}/v1/me", headers=bearer(key["key"])) as r:
                assert r.status == 200  # now cached in process two
            if attempt == 1:
                # Kill process two's LISTEN connection: it must reconnect and flush.
                conn = await asyncpg.connect(database_url)
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
                await conn.close()
                assert killed >= 1
                await asyncio.sleep(0.3)
            async with http.delete(
                f"http://127.0.0.1:{a1}/admin/v1/keys/{key['id']}", headers=admin_headers()
            ) as r:
                assert r.status == 204
            elapsed = await _revoked_within(http, f"http://127.0.0.1:{p2}/v1/me", key["key"], 1.0)
            what = "after pg_terminate_backend" if attempt else "plain"
            print(f"\nrevocation reached the other process in {elapsed * 1000:.0f} ms ({what})")
            assert elapsed < 1.0


async def test_workers_share_the_port_and_stop_cleanly(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    config, proxy_port, admin_port = _write_config(tmp_path, "workers", database_url, upstream.url)
    supervisor = _serve(config, tmp_path, "--workers", "2")
    spawn.append(supervisor)
    async with aiohttp.ClientSession() as http:
        await _ready(admin_port)
        statuses = []
        for _ in range(20):
            async with http.get(f"http://127.0.0.1:{proxy_port}/v1/public/x") as r:
                statuses.append(r.status)
        assert set(statuses) == {200}
    supervisor.send_signal(signal.SIGINT)
    assert supervisor.wait(15) == 0
    log = (tmp_path / "workers.log").read_text()
    assert "Traceback" not in log


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
        timeout=60,
    )


def test_cli_keys_and_members(tmp_path: Path, database_url: str) -> None:
    config, _, _ = _write_config(tmp_path, "cli", database_url, "http://127.0.0.1:9")
    user = unique("user")
    created = _cli(
        "keys",
        "create",
        "--user",
        user,
        "--name",
        "ci",
        "--scope",
        "me:read",
        "--scope",
        "projects:read",
        "--json",
        config=config,
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("gwk_") and key["scopes"] == ["me:read", "projects:read"]
    listing = _cli("keys", "list", "--user", user, "--json", config=config)
    assert [k["id"] for k in json.loads(listing.stdout)["keys"]] == [key["id"]]
    assert list(json.loads(listing.stdout)) == ["keys"]  # the admin API's JSON, no cursor
    assert key["key"] not in listing.stdout
    text = _cli("keys", "list", "--user", user, config=config)
    assert key["display_prefix"] in text.stdout and key["key"] not in text.stdout
    rotated = _cli("keys", "rotate", key["id"], "--grace-seconds", "60", "--json", config=config)
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["key"] != key["key"]
    # Newest first, as the page lists them; every user's without --user, in pages.
    newest = json.loads(_cli("keys", "list", "--user", user, "--json", config=config).stdout)
    assert [k["id"] for k in newest["keys"]] == [json.loads(rotated.stdout)["id"], key["id"]]
    first = json.loads(_cli("keys", "list", "--limit", "1", "--json", config=config).stdout)
    assert len(first["keys"]) == 1 and first["next_cursor"] == first["keys"][0]["id"]
    following = _cli(
        "keys", "list", "--limit", "1", "--cursor", first["next_cursor"], config=config
    )
    assert following.returncode == 0 and first["keys"][0]["id"] not in following.stdout
    assert _cli("keys", "revoke", key["id"], config=config).returncode == 0
    assert (
        _cli("members", "add", "--user", user, "--organization", "acme", config=config).returncode
        == 0
    )
    assert (
        _cli("members", "remove", "--user", user, "--project", "p1", config=config).returncode == 0
    )
    for bad in (
        ("keys", "create", "--user", user, "--name", "x", "--scope", "nope"),
        ("keys", "revoke", "not-a-uuid"),
        (
            "keys",
            "create",
            "--user",
            user,
            "--name",
            "x",
            "--scope",
            "me:read",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ),
    ):
        result = _cli(*bad, config=config)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("gateway: "), (
            result.stderr
        )
        assert "Traceback" not in result.stderr


def test_cli_policy_check_and_explain(tmp_path: Path) -> None:
    config = ROOT / "config" / "gateway.yaml"
    check = _cli("policy", "check", config=config)
    assert check.returncode == 0 and "list-projects" in check.stdout
    allowed = _cli(
        "policy",
        "explain",
        "GET",
        "/v1/organizations/acme/projects",
        "--scopes",
        "projects:admin",
        config=config,
    )
    assert allowed.returncode == 0
    assert "list-projects" in allowed.stdout and "'org_id': 'acme'" in allowed.stdout
    assert "ALLOW" in allowed.stdout
    denied = _cli(
        "policy", "explain", "DELETE", "/v1/projects/p1", "--scopes", "projects:read", config=config
    )
    assert denied.returncode == 1 and "missing projects:admin" in denied.stdout
    nothing = _cli("policy", "explain", "PUT", "/v1/me", config=config)
    assert nothing.returncode == 1 and "no route" in nothing.stdout
    # As the gateway judges requests: a lower-case method is a 400 there, a query is fine.
    lower = _cli("policy", "explain", "get", "/v1/me", config=config)
    assert lower.returncode == 1 and lower.stderr.count("\n") == 1 and "upper-case" in lower.stderr
    query = _cli("policy", "explain", "GET", "/v1/me?x=1", "--scopes", "me:read", config=config)
    assert query.returncode == 0 and "ALLOW" in query.stdout
    unknown = _cli("policy", "explain", "GET", "/v1/me", "--scopes", "nosuch:scope", config=config)
    assert unknown.returncode == 1 and "--scopes: unknown scope 'nosuch:scope'" in unknown.stderr
    bare = _cli("policy", "explain", "GET", "/v1/me", config=config)
    assert bare.returncode == 0 and "verdict:  401 without a credential" in bare.stdout
    slashless = _cli("policy", "explain", "GET", "v1/me", config=config)
    assert slashless.returncode == 1 and "must begin with '/'" in slashless.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.yaml").write_text(
        "upstream: core\nroutes:\n  - {methods: [GET], path: /x, scopes: [nope]}\n"
    )
    bad = _cli("policy", "check", str(broken), config=config)
    assert bad.returncode == 1 and "a.yaml:3" in bad.stderr and "unknown scope" in bad.stderr


def test_every_command_says_what_it_does() -> None:
    """`gateway --help` and each command group's help describe every command; a
    rotation's help says its default grace."""
    top = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True,
                         text=True, env=_env(), check=True).stdout  # fmt: skip
    listed = top.split("positional arguments:")[1].split("options:")[0]
    for command in ("serve", "keys", "webhooks", "members", "policy", "audit", "signing-keys"):
        line = next(line for line in listed.splitlines() if line.strip().startswith(command))
        assert len(line.split()) > 1, f"{command} has no help text"
    for group in ("keys", "members", "policy", "signing-keys", "webhooks"):
        shown = subprocess.run([sys.executable, "-m", "gateway", group, "--help"],
                               capture_output=True, text=True, env=_env(), check=True).stdout  # fmt: skip
        commands = shown.split("positional arguments:")[1].split("options:")[0].splitlines()[2:]
        assert commands and all(len(line.split()) > 1 for line in commands if line.strip()), shown
    rotate = subprocess.run([sys.executable, "-m", "gateway", "keys", "rotate", "--help"],
                            capture_output=True, text=True, env=_env(), check=True).stdout  # fmt: skip
    assert "default: 0" in " ".join(rotate.split())


def test_a_cli_command_stops_the_embedded_database_it_started(tmp_path: Path) -> None:
    pytest.importorskip("pgserver", reason="the embedded PostgreSQL (pgserver) is not installed")
    config = tmp_path / "embedded.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "policies": {"dir": str(ROOT / "policies")}}))  # fmt: skip
    env = environment(GATEWAY_DATABASE_URL=None, GATEWAY_ADMIN_TOKEN=None)
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list", "--user", "u", "--config", str(config)],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and listed.stdout.strip() == "no keys", listed.stderr
    pgdata = tmp_path / "state" / "pgdata"
    assert (pgdata / "PG_VERSION").exists()  # it did run there
    assert not (pgdata / "postmaster.pid").exists()  # and stopped with the command


def test_signing_key_generation(tmp_path: Path) -> None:
    config = ROOT / "config" / "gateway.yaml"
    for alg in ("EdDSA", "ES256", "RS256"):
        out = tmp_path / f"{alg}.pem"
        result = _cli("signing-keys", "generate", "--out", str(out), "--alg", alg, config=config)
        assert result.returncode == 0 and out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
        assert oct(out.stat().st_mode & 0o777) == "0o600"
    again = _cli("signing-keys", "generate", "--out", str(tmp_path / "EdDSA.pem"), config=config)
    assert again.returncode == 1 and "refusing" in again.stderr


def test_serve_refuses_a_broken_start_with_one_line(tmp_path: Path, database_url: str) -> None:
    config, _, _ = _write_config(tmp_path, "broken", database_url, "http://127.0.0.1:9")
    raw = yaml.safe_load(config.read_text())
    raw["tokens"] = {"signing_keys": [{"kid": "k1", "file": str(tmp_path / "missing.pem")}]}
    config.write_text(yaml.safe_dump(raw))
    result = _cli("serve", config=config)
    assert result.returncode == 2
    assert f"{config}: tokens.signing_keys[0] (kid k1): cannot load" in result.stderr
    assert "Traceback" not in result.stderr
    policies = tmp_path / "bad-policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(
        "upstream: core\nroutes:\n  - {methods: [GET], path: /x, scopes: [nope]}\n"
    )
    raw.pop("tokens")
    raw["policies"] = {"dir": str(policies)}
    config.write_text(yaml.safe_dump(raw))
    result = _cli("serve", config=config)
    assert result.returncode == 1
    assert "policy set refused" in result.stderr and "a.yaml:3" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_already_taken_is_said_in_one_line_not_taken_for_a_database_error(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    config, proxy_port, _ = _write_config(tmp_path, "taken", database_url, upstream.url)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", proxy_port))
        holder.listen()
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            env=_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert "address already in use" in lines[-1] and "database" not in lines[-1], lines[-1]
    assert "Traceback" not in done.stderr
