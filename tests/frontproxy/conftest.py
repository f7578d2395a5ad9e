"""Real nginx and Caddy from the distribution in front of a real gateway's decision
listener, running the configurations of docs/front-proxies.md verbatim. Skipped with one line when
the binary is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing import free_port, stop
from tests.e2e.test_decisions import gateway
from tests.support import ROOT, RecordingUpstream, RunningGateway

__all__ = ["gateway"]  # the decision listener's gateway, shared with the shape tests


def readme_block(language: str) -> str:
    """The one fenced block of `language` in docs/front-proxies.md."""
    page = (ROOT / "docs" / "front-proxies.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", page, re.S)
    assert len(blocks) == 1, f"expected one {language} block in docs/front-proxies.md"
    return str(blocks[0])


@dataclass
class Front:
    """A front proxy listening on 127.0.0.1:`port`."""

    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _addresses(gateway: RunningGateway, upstream: RecordingUpstream) -> dict[str, str]:
    host, port = gateway.decisions_address
    return {"127.0.0.1:8082": f"{host}:{port}", "127.0.0.1:9000": upstream.url.split("//")[1]}


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"front proxy exited:\n{log.read_text(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("front proxy did not listen")


@contextmanager
def _running(argv: list[str], port: int, log: Path) -> Iterator[Front]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, log)
        yield Front(port, log)
    finally:
        stop(process, timeout=10)


@pytest.fixture
def nginx(tmp_path: Path, gateway: RunningGateway, upstream: RecordingUpstream) -> Iterator[Front]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.skip("nginx tests need nginx: apt-get install nginx-light")
    port = free_port()
    text = readme_block("nginx").replace("listen 8000;", f"listen 127.0.0.1:{port};")
    for placeholder, address in _addresses(gateway, upstream).items():
        text = text.replace(placeholder, address)
    temp = tmp_path / "nginx"
    temp.mkdir()
    conf = temp / "nginx.conf"
    conf.write_text(text)  # the README's whole configuration, run the way it says
    flags = (
        f"daemon off; master_process off; pid {temp}/nginx.pid; error_log {temp}/error.log info;"
    )
    argv = [binary, "-p", f"{temp}/", "-c", str(conf), "-g", flags]
    with _running(argv, port, temp / "out.log") as front:
        yield front


@pytest.fixture
def caddy(tmp_path: Path, gateway: RunningGateway, upstream: RecordingUpstream) -> Iterator[Front]:
    binary = shutil.which("caddy")
    if binary is None:
        pytest.skip("Caddy tests need Caddy: apt-get install caddy")
    port = free_port()
    site = readme_block("caddyfile").replace("\n:8000 {", f"\nhttp://127.0.0.1:{port} {{", 1)
    for placeholder, address in _addresses(gateway, upstream).items():
        site = site.replace(placeholder, address)
    temp = tmp_path / "caddy"
    temp.mkdir()
    caddyfile = temp / "Caddyfile"
    caddyfile.write_text(site)  # verbatim, its global options (admin off) included
    env_home = ["env", f"HOME={temp}", f"XDG_DATA_HOME={temp}", f"XDG_CONFIG_HOME={temp}"]
    argv = [*env_home, binary, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    with _running(argv, port, temp / "out.log") as front:
        yield front
