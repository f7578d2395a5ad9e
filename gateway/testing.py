"""Run a real `gateway serve` process: for the tests, `fuzz/` and `bench/` (as aiohttp
ships `aiohttp.test_utils`). Imports no other gateway module: it only spawns the CLI.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def _ports_below_the_ephemeral_range() -> list[int]:
    """Ports the kernel never picks by itself, shuffled. A port from `bind(("", 0))`
    is one of the ephemeral range, which outgoing connections take their local port
    from: between the check and the listener's own bind, a database or HTTP client
    connection could take it (EADDRINUSE, the process under test exits)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as limits:
            low = int(limits.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768  # Linux's default range starts here
    ports = list(range(max(1_024, low - 12_000), low))
    random.shuffle(ports)  # two processes picking ports at once rarely meet
    return ports


# Each port handed out once per cycle: a port checked free and handed out is not
# handed out again before its listener had ample time to bind it.
_PORTS = _ports_below_the_ephemeral_range()
_candidates = itertools.cycle(_PORTS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral
    range (see `_ports_below_the_ephemeral_range`)."""
    for port in itertools.islice(_candidates, len(_PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
            return port
    raise OSError("no free TCP port on 127.0.0.1 below the ephemeral range")


def spawn_serve(
    config: Path,
    log: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """`gateway serve --config CONFIG ARGS`, stdout and stderr into `log`.

    `prefix` goes before the interpreter (e.g. `taskset -c 1`).
    """
    argv = [*prefix, sys.executable, "-m", "gateway", "serve", "--config", str(config), *args]
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - a fixed argv of our own
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )


def wait_ready(
    admin_url: str, process: subprocess.Popen[bytes] | None = None, within: float = 30
) -> None:
    """Poll `ADMIN/readyz` until it answers 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gateway serve exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(admin_url + "/readyz", timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {admin_url} was not ready within {within} s")


def stop(*processes: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM (a graceful shutdown) to all at once, then SIGKILL to any that has not
    ended `timeout` seconds later: several processes drain side by side."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serving(
    config: Path,
    log: Path,
    admin_url: str,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    within: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    """A ready `gateway serve` for the duration of the block; stopped after it."""
    process = spawn_serve(config, log, args=args, env=env, prefix=prefix)
    try:
        wait_ready(admin_url, process, within)
        yield process
    finally:
        stop(process)


def environment(**overrides: str | None) -> dict[str, str]:
    """This process's environment with `overrides` applied (None removes a variable)."""
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
