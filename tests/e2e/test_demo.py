"""`gateway demo` as a newcomer runs it: the printed page link and curl lines work, and
the demo upstream signs a person in to the API keys page."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.testing import environment, free_port
from tests.support import ROOT


def _read_until(
    process: subprocess.Popen[str], marker: str, within: float = 60, errors: Path | None = None
) -> str:
    """The demo's output up to `marker`; else fail with it, and with what it said on
    stderr (`errors`, the file its stderr went to)."""
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            # The curl line after the marker belongs to the same block.
            seen.append(process.stdout.readline())
            return "".join(seen)
    said = errors.read_text()[-4000:] if errors is not None and errors.exists() else ""
    raise AssertionError(
        "demo did not print its instructions:\n" + "".join(seen) + "\nstderr:\n" + said
    )


async def test_demo_prints_working_instructions(tmp_path: Path, database_url: str) -> None:
    # Every listener on a free port (the demo turns decisions on; a `make demo` running
    # beside the tests holds the shipped 8082).
    proxy, admin, upstream, decisions = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "demo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "listen": {"host": "127.0.0.1", "port": proxy},
                "admin": {"host": "127.0.0.1", "port": admin},
                "decisions": {"listen": {"host": "127.0.0.1", "port": decisions}},
                "policies": {"dir": str(ROOT / "policies")},
                "upstreams": {"core": {"url": f"http://127.0.0.1:{upstream}"}},
            }
        )
    )
    env = environment(GATEWAY_DATABASE_URL=database_url, GATEWAY_ADMIN_TOKEN=None)
    errors = tmp_path / "demo.err"
    with errors.open("w") as stderr:
        process = subprocess.Popen(  # noqa: ASYNC220 - its output is read line by line below
            [sys.executable, "-m", "gateway", "demo", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    try:
        text = _read_until(process, "admin API token for this demo", errors=errors)
        page = re.search(r"^  (http://\S+/account/api-keys)$", text, re.M)
        key = re.search(r"^  (gwk_\w+)$", text, re.M)
        assert page and key, text
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _curl_lines_answer_as_printed(http, text, key[1])
            await _sign_in_and_create_a_key(http, page[1])
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped." in out


async def _curl_lines_answer_as_printed(http: aiohttp.ClientSession, text: str, key: str) -> None:
    expected = re.findall(r"# (\d{3}): .*\n\s+curl -i (.*)", text)
    assert len(expected) == 6
    for status, args in expected:
        method = "POST" if "-X POST" in args else "DELETE" if "-X DELETE" in args else "GET"
        url = args.split()[-1]
        headers = {"Authorization": f"Bearer {key}"} if "Authorization" in args else {}
        async with http.request(method, url, headers=headers) as response:
            assert response.status == int(status), (method, url)


async def _sign_in_and_create_a_key(http: aiohttp.ClientSession, page: str) -> None:
    async with http.get(page) as response:
        assert response.status == 200 and "API keys" in await response.text()
    api = page + "/v1"
    async with http.get(api + "/session") as response:
        assert response.status == 401
        login_url = (await response.json(content_type=None))["login_url"]
    # The host application's sign-in sets its session cookie and sends the person back.
    async with http.get(login_url, params={"return_to": "/account/api-keys"}) as response:
        assert response.status == 200 and str(response.url) == page
    async with http.get(api + "/session") as response:
        assert (await response.json())["user"]["id"] == "demo-user"
    origin = page.split("/account")[0]
    body = {"name": "from the page", "scopes": ["me:read"]}
    async with http.post(api + "/keys", json=body, headers={"Origin": origin}) as response:
        assert response.status == 201
        created = await response.json()
    async with http.get(origin + "/v1/me", headers={"X-API-Key": created["key"]}) as response:
        assert response.status == 200


def _start_demo(config: Path) -> subprocess.Popen[str]:
    env = environment(GATEWAY_DATABASE_URL=None, GATEWAY_ADMIN_TOKEN=None)
    with (config.parent / "demo.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env,
        )  # fmt: skip


def _postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


async def test_demo_stops_its_embedded_database_on_sigterm_and_replaces_its_key(
    tmp_path: Path,
) -> None:
    """`kill PID` stops the demo as Ctrl-C does, embedded PostgreSQL included, even
    after a demo that was killed outright left its handle behind; the next demo's key
    replaces the last one's."""
    pytest.importorskip("pgserver", reason="the embedded PostgreSQL (pgserver) is not installed")
    if not os.environ.get("GATEWAY_SOAK"):
        # Three demos with their own embedded PostgreSQL: kept out of `make test`'s ten
        # minutes (one CI run saw a demo outlive SIGTERM by 60 s under the full suite's
        # load, unexplained so far; its log now says where it stood).
        pytest.skip("three embedded-PostgreSQL demos: run by `make soak`")
    # Every listener on a free port (the demo turns decisions on; a `make demo` running
    # beside the tests holds the shipped 8082).
    proxy, admin, upstream, decisions = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": proxy},
        "admin": {"host": "127.0.0.1", "port": admin},
        "decisions": {"listen": {"host": "127.0.0.1", "port": decisions}},
        "policies": {"dir": str(ROOT / "policies")},
        "upstreams": {"core": {"url": f"http://127.0.0.1:{upstream}"}},
    }))  # fmt: skip
    pgdata = tmp_path / "state" / "pgdata"
    keys = []
    for round_ in range(2):
        process = _start_demo(config)
        try:
            text = _read_until(process, "admin API token for this demo", within=120)
        except BaseException:
            process.kill()
            raise
        found = re.search(r"^  (gwk_\w+)$", text, re.M)
        assert found, text
        keys.append(found[1])
        if round_ == 0:
            # A killed process's handle, as a `kill -9` of an earlier demo leaves it.
            handles = pgdata / ".handle_pids.json"
            handles.write_text(json.dumps([*json.loads(handles.read_text()), 2**22 + 7]))
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            tail = (tmp_path / "demo.log").read_text()[-3000:]
            raise AssertionError(
                f"the demo outlived SIGTERM by 60 s; its log ends:\n{tail}"
            ) from None
        assert process.returncode == 0 and "stopped" in out
        # (The first left it running for the dead handle; the second recovered.)
        assert _postmaster_running(pgdata) == (round_ == 0)
    url = f"http://127.0.0.1:{proxy}/v1/me"
    process = _start_demo(config)
    try:
        _read_until(process, "admin API token for this demo", within=120)
        async with aiohttp.ClientSession() as http:
            statuses = []
            for key in keys:
                async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
                    statuses.append(response.status)
        # The third demo revoked the second's key, the second the first's.
        assert statuses == [401, 401]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
