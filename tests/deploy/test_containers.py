"""deploy/ run as printed (§20): the image built and run alone, read-only, against a real
PostgreSQL; the compose stack brought up with the commands docs/deployment.md prints and checked
through the balancer. Needs podman (with runc) and, for the base image, mmdebstrap;
without them these tests skip with one line. `make deploy-test` runs them alone.

No container registry is reachable here: the base image is built from Debian's
packages (mmdebstrap, `podman import`), and the official images the compose file names
(postgres, redis, nginx, python) are stand-ins built from Debian's packages too
(`standins/`), tagged with those names so that the compose file runs unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.testing import free_port
from tests.support import ROOT

BASE = "localhost/gateway-base:bookworm"
IMAGE = "localhost/gateway:latest"
STANDINS = {
    "postgres": "docker.io/library/postgres:16-alpine",
    "redis": "docker.io/library/redis:7-alpine",
    "nginx": "docker.io/library/nginx:1.27-alpine",
}
COMPOSE = Path(sys.executable).parent / "podman-compose"
INSTALL = "container tests need podman, runc and mmdebstrap: apt-get install podman runc mmdebstrap"
# This machine's kernel: crun refuses its cgroups, and the default ulimits are refused.
ENGINE_CONF = '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n'
# pip reaches the package index only with the host's CA bundle, on the host's network.
BUILD_FLAGS = ["--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
# apt-get needs no CA bundle (its archives are signed), and Debian's ssl-cert package
# writes into /etc/ssl/certs: the stand-ins are built without the host's mounted.
STANDIN_FLAGS = ["--network", "host"]


def _run(
    *argv: str | Path, timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """podman that runs containers here; its configuration file."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip(INSTALL)
    conf = tmp_path_factory.mktemp("engine") / "containers.conf"
    conf.write_text(ENGINE_CONF)
    before = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        if subprocess.run(["podman", "info"], capture_output=True, timeout=60).returncode:
            pytest.skip(f"podman does not answer here; {INSTALL}")
        yield conf
    finally:
        if before is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = before


def _exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image]).returncode == 0


@pytest.fixture(scope="module")
def images(engine: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The base (once per machine), the gateway image (as `docker build` would), the
    stand-ins; what was measured."""
    if not _exists(BASE):
        if shutil.which("mmdebstrap") is None:
            pytest.skip(INSTALL)
        tar = tmp_path_factory.mktemp("base") / "base.tar"
        _run("mmdebstrap", "--variant=minbase",
             "--include=python3,python3-venv,python3-dev,python-is-python3,ca-certificates",
             "bookworm", tar)  # fmt: skip
        _run("podman", "import", tar, BASE)
    started = time.monotonic()
    _run("podman", "build", *BUILD_FLAGS, "--build-arg", f"BASE={BASE}",
         "-f", ROOT / "deploy" / "Dockerfile", "-t", IMAGE, ROOT, timeout=1200)  # fmt: skip
    built = time.monotonic() - started
    for target, name in STANDINS.items():
        _run("podman", "build", *STANDIN_FLAGS, "--build-arg", f"BASE={BASE}", "--target", target,
             "-t", name, "-f", Path(__file__).parent / "standins" / "Containerfile",
             Path(__file__).parent / "standins")  # fmt: skip
    _run("podman", "tag", BASE, "docker.io/library/python:3.11-slim-bookworm")
    _run("podman", "tag", IMAGE, "localhost/gateway:test")
    size = _run("podman", "image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"\nimage {IMAGE}: {int(size) / 1e6:.0f} MB, built in {built:.0f} s")
    return {"size": size, "built": f"{built:.0f}"}


async def _until(url: str, want: int = 200, seconds: float = 90, **kwargs: Any) -> float:
    """Poll until `url` answers `want`; the seconds it took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url, **kwargs) as r:
                    if r.status == want:
                        return time.monotonic() - started
            except aiohttp.ClientError:
                pass
            assert time.monotonic() - started < seconds, f"{url} never answered {want}"
            await asyncio.sleep(0.25)


async def test_the_image_starts_alone_read_only_and_serves_a_key(
    images: dict[str, str], database_url: str
) -> None:
    """Nothing but GATEWAY_DATABASE_URL and GATEWAY_ADMIN_TOKEN, no mounts, a read-only
    root filesystem: it migrates, serves the shipped policies, logs JSON lines, and
    SIGTERM (PID 1) drains and exits 0."""
    parts = urlsplit(database_url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip("the image test needs a PostgreSQL on 127.0.0.1 (GATEWAY_TEST_DATABASE_URL)")
    # The container reaches the host's loopback as 10.0.2.2 (slirp4netns).
    inside = database_url.replace(f"@{parts.hostname}", "@10.0.2.2", 1)
    proxy, admin, token = free_port(), free_port(), "image-test-admin-token-0123456789"
    name = f"gateway-alone-{proxy}"
    _run("podman", "run", "-d", "--name", name, "--read-only",
         "--network", "slirp4netns:allow_host_loopback=true",
         "-p", f"127.0.0.1:{proxy}:8080", "-p", f"127.0.0.1:{admin}:8081",
         "-e", f"GATEWAY_DATABASE_URL={inside}", "-e", f"GATEWAY_ADMIN_TOKEN={token}", IMAGE)  # fmt: skip
    try:
        took = await _until(f"http://127.0.0.1:{admin}/readyz")
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert (await r.json())["database"] == "ok"
            body = {"user_id": "img", "name": "k", "scopes": ["me:read", "actor_tokens:create"]}
            async with http.post(f"http://127.0.0.1:{admin}/admin/v1/keys", json=body,
                                 headers=headers) as r:  # fmt: skip
                assert r.status == 201
                key = (await r.json())["key"]
            async with http.post(f"http://127.0.0.1:{proxy}/auth/actor-tokens",
                                 json={"scopes": ["me:read"]},
                                 headers={"Authorization": f"Bearer {key}"}) as r:  # fmt: skip
                assert r.status == 201, await r.text()
            async with http.get(f"http://127.0.0.1:{proxy}/v1/me") as r:
                assert r.status == 401  # the shipped policies
        await asyncio.to_thread(_run, "podman", "stop", "-t", "30", name)
        code = _run("podman", "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = (await _shell(["podman", "logs", name])).stderr
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith('{"time"')]
        print(f"\nimage alone: ready {took:.1f} s after start; exit {code} after SIGTERM")
        assert code == "0"
        assert any(line["message"].startswith("stopping") for line in lines), logs[-2000:]
        assert {"time", "level", "logger", "message"} <= set(lines[0])
    finally:
        await _shell(["podman", "rm", "-f", name])


async def _shell(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, argv, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _readme_commands() -> list[str]:
    page = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", page, re.S)
    assert len(blocks) == 1, "expected one sh block in docs/deployment.md (the compose commands)"
    return [line for line in blocks[0].splitlines() if line.strip()]


def _as_here(line: str, port: int) -> str:
    """A README line as this machine runs it: podman-compose for docker compose, the
    balancer on a free port, and the image build with the machine's flags."""
    if line.startswith("docker compose -f deploy/compose.yaml build"):
        return ":"  # built by the fixture (podman build needs this machine's flags)
    line = line.replace("docker compose", str(COMPOSE))
    return line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def _script(lines: list[str], port: int, *, tail: str = "") -> str:
    return "set -euo pipefail\n" + "\n".join(_as_here(line, port) for line in lines) + "\n" + tail


def _container(service: str) -> str:
    found = _run("podman", "ps", "--filter", f"label=com.docker.compose.service={service}",
                 "--format", "{{.Names}}").stdout.split()  # fmt: skip
    assert len(found) == 1, found
    return found[0]


def _address(service: str) -> str:
    inspected = json.loads(_run("podman", "inspect", _container(service)).stdout)
    networks = inspected[0]["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


async def test_the_compose_stack_runs_as_the_readme_prints_it(
    images: dict[str, str], tmp_path: Path
) -> None:
    if not COMPOSE.exists():
        pytest.skip("the compose test needs podman-compose: pip install -e '.[dev]'")
    repo = tmp_path / "repo"  # the README's paths, without touching this checkout's deploy/.env
    shutil.copytree(ROOT / "deploy", repo / "deploy")
    shutil.copytree(ROOT / "policies", repo / "policies")
    port = free_port()
    commands = _readme_commands()
    stop_at = next(i for i, line in enumerate(commands) if " stop gateway-2" in line)
    env_line = f"sed -i 's/^GATEWAY_PORT=.*/GATEWAY_PORT={port}/' deploy/.env"
    up_at = next(i for i, line in enumerate(commands) if line.endswith(" up -d"))
    bring_up = [*commands[:1], env_line, *commands[1 : up_at + 1]]
    started = time.monotonic()
    up = await _shell(["bash", "-c", _script(bring_up, port)], repo)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # podman-compose does not wait for health (no systemd timers here): wait as
        # `docker compose up` does for the `service_healthy` conditions.
        for service in ("gateway-1", "gateway-2"):
            try:
                await _until(f"http://{_address(service)}:8081/readyz")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_logs(repo, service)}") from None
        rest = commands[up_at + 1 : stop_at]
        up = await _shell(["bash", "-c", _script(rest, port, tail='echo "KEY=$KEY"\n')], repo)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        first_200 = time.monotonic() - started
        key = re.search(r"KEY=(gwk_\w+)$", up.stdout, re.M)
        assert key, up.stdout[-2000:]
        assert up.stdout.count('"X-Gateway-User-Id": "u1"') == 2  # the key, then the token
        await _both_hosts_share_the_signing_key(key[1])
        await _readiness_survives_a_postgresql_restart()
        failed, total = await _stop_under_load(repo, commands[stop_at], port, key[1])
        balancer = _logs(repo, "balancer") + _logs(repo, "gateway-2") if failed else ""
        down = await _shell(["bash", "-c", _script(commands[stop_at + 1 :], port)], repo)
        assert down.returncode == 0, down.stderr[-2000:]
    finally:
        await _shell([str(COMPOSE), "-f", "deploy/compose.yaml", "down", "-v"], repo)
    print(f"\ncompose: README commands to the first 200 in {first_200:.0f} s; gateway-2 stopped"
          f" under load: {failed.total()} of {total} requests failed {dict(failed)}")  # fmt: skip
    assert not failed, balancer
    left = _run("podman", "ps", "-a", "--filter", "label=com.docker.compose.project=gateway",
                "--format", "{{.Names}}").stdout.split()  # fmt: skip
    assert left == []
    assert "gateway_default" not in _run("podman", "network", "ls", "--format", "{{.Name}}").stdout
    volumes = _run("podman", "volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in volumes if v.startswith("gateway_")], volumes


def _logs(repo: Path, service: str) -> str:
    done = subprocess.run([str(COMPOSE), "-f", "deploy/compose.yaml", "logs", service], cwd=repo,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return (done.stdout + done.stderr)[-4000:]


async def _both_hosts_share_the_signing_key(key: str) -> None:
    """An actor token minted through host 1 is accepted through host 2, and the reverse."""
    one, two = _address("gateway-1"), _address("gateway-2")
    async with aiohttp.ClientSession() as http:
        for minter, checker in ((one, two), (two, one)):
            async with http.post(f"http://{minter}:8080/auth/actor-tokens",
                                 json={"scopes": ["me:read"]},
                                 headers={"Authorization": f"Bearer {key}"}) as r:  # fmt: skip
                assert r.status == 201, await r.text()
                token = (await r.json())["access_token"]
            async with http.get(f"http://{checker}:8080/v1/me",
                                headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()


async def _readiness_survives_a_postgresql_restart() -> None:
    """A database restart is said in /readyz's body, never its status."""
    url = f"http://{_address('gateway-1')}:8081/readyz"
    restart = asyncio.create_task(
        asyncio.to_thread(_run, "podman", "restart", "-t", "5", _container("postgres"))
    )
    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:
        while not restart.done():
            async with http.get(url) as r:
                statuses.append(r.status)
            await asyncio.sleep(0.1)
    await restart
    assert statuses and set(statuses) == {200}, statuses


async def _stop_under_load(
    repo: Path, stop_line: str, port: int, key: str
) -> tuple[Counter[int], int]:
    """The README's `stop gateway-2` while 8 clients call through the balancer: the
    statuses other than 200 (0: no answer), the number of requests."""
    results: list[int] = []
    done = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not done.is_set():
            try:
                async with http.get(f"http://127.0.0.1:{port}/v1/me",
                                    headers={"Authorization": f"Bearer {key}"}) as r:  # fmt: skip
                    results.append(r.status)
            except aiohttp.ClientError:
                results.append(0)

    async with aiohttp.ClientSession() as http:
        load = asyncio.gather(*(client(http) for _ in range(8)))
        await asyncio.sleep(1.0)
        stopped = await _shell(["bash", "-c", _script([stop_line], port)], repo)
        await asyncio.sleep(1.0)
        done.set()
        await load
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    return Counter(status for status in results if status != 200), len(results)
