"""Instructions per request, counted by callgrind: a figure that stays put however busy
the machine is (wrk's requests per second moved 0.65-1.48x between rounds of the
same pair on the shared 2-core machine this project is measured on).

`make count` (needs valgrind and nginx from the distribution) runs `gateway serve`
under `valgrind --tool=callgrind` and sends it requests one at a time over one
keep-alive connection: a cached-key decision (`/decisions/forward-auth`), a
proxied cached-key request (`GET /api/200B`, nginx the upstream on loopback) and
the same request with all of §21 (`policy`: a key with `meta` and an expiry, under a
global and an organization lifetime policy, on a `member_of` route, spending its
user's credit pool, the new-network notice on), and the plain proxied request with
only the new-network notice on (`notice`). Each
row runs twice, with N and 5N requests; the difference divided by 4N is what one
request costs, start-up, warm-up and shut-down cancelling out. User-space
instructions of the gateway process only: the kernel's share of a socket write is
not in it, nor the client's or nginx's work. Compare a change with its parent, on
the same machine: the count depends on the Python build and the libraries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run import (
    ADMIN_TOKEN,
    OUT,
    PY,
    certificates,
    gateway_config,
    nginx_conf,
    process,
    scratch_database,
    seed,
    wait_http,
)

from gateway.testing import free_port

_COLLECTED = re.compile(r"Collected : (\d+)")
_PAIRED = ("policy", "notice")


def request_for(row: str, key: str) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n"
    if row == "policy":
        head = "GET /orgs/bench-org/200B HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
    elif row == "decision":
        head = (
            "GET /decisions/forward-auth HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
            + "X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /api/200B\r\n"
        )  # fmt: skip
    else:
        head = "GET /api/200B HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
    return (head + "User-Agent: bench\r\n\r\n").encode()


def exchange(sock: socket.socket, request: bytes) -> None:
    """Send one request and read its whole response (framed by Content-Length)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"bench: expected 200, got {head.splitlines()[0]!r}")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += _received(sock)


def _received(sock: socket.socket) -> bytes:
    piece = sock.recv(65536)
    if not piece:
        raise SystemExit("bench: the gateway closed the connection")
    return piece


def connect(port: int, within: float) -> socket.socket:
    """A connection to the listener, once the (slow, under valgrind) process opened it."""
    deadline = time.monotonic() + within
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def instructions(config: Path, port: int, request: bytes, count: int, tag: str) -> int:
    """User-space instructions of a `gateway serve` that answered `count` requests."""
    log = OUT / f"callgrind-{tag}.log"
    env = _environment() | {"PYTHONHASHSEED": "0"}
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log}",
        PY, "-m", "gateway", "serve", "--config", str(config),
    ]  # fmt: skip
    served = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        with connect(port, within=600) as sock:
            for _ in range(count):
                exchange(sock, request)
    finally:
        served.send_signal(signal.SIGTERM)
        served.wait(300)
    found = _COLLECTED.search(log.read_text())
    if found is None:
        raise SystemExit(f"bench: no instruction count in {log}")
    return int(found[1])


def _environment() -> dict[str, str]:
    # The configuration file names the bench database; the environment must not override it.
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_DATABASE_URL"}
    return env | {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}


def measure(database_url: str, requests: int) -> dict[str, float]:
    upstream_port, tls_port = free_port(), free_port()
    tls = certificates()
    nginx = nginx_conf(upstream_port, free_port(), tls_port, tls)

    def config_for(name: str, proxy: int, decisions: int) -> Path:
        key_policy = None
        if "policy" in name:  # as `make bench`'s §21 row
            key_policy = {"max_lifetime_days": 3650, "new_network_notice": {"enabled": True}}
        elif "notice" in name:
            key_policy = {"new_network_notice": {"enabled": True}}
        return gateway_config(
            database_url, upstream_port, proxy, free_port(), name, decisions,
            https_upstream=(tls_port, tls["ca"]), key_policy=key_policy,
        )  # fmt: skip

    migrate = [PY, "-m", "gateway", "migrate", "--config", str(config_for("count", 0, 0))]
    subprocess.run(migrate, check=True, capture_output=True, env=_environment())
    cached, _, policed, _ = asyncio.run(seed(database_url, 0))
    results: dict[str, float] = {}
    with process(["nginx", "-c", str(nginx)], "nginx-count.log"):
        wait_http(f"http://127.0.0.1:{upstream_port}/public/200B")
        for row in ("decision", "proxied", "policy", "notice"):
            runs = []
            for count in (requests, 5 * requests):
                proxy, decisions = free_port(), free_port()
                config = config_for(f"count-{row}-{count}", proxy, decisions)
                port = decisions if row == "decision" else proxy
                key = policed if row == "policy" else cached
                runs.append((config, port, request_for(row, key), count, f"{row}-{count}"))
            with ThreadPoolExecutor(2) as pool:  # the two runs side by side, one per core
                small, large = pool.map(lambda run: instructions(*run), runs)
            results[row] = (large - small) / (4 * requests)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="N (the second run sends 5N)")
    parser.add_argument("--database-url", default=os.environ.get("GATEWAY_DATABASE_URL"))
    args = parser.parse_args()
    missing = [tool for tool in ("valgrind", "nginx") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench: needs {' and '.join(missing)} (apt-get install valgrind nginx-light)")
    OUT.mkdir(exist_ok=True)
    with scratch_database(args.database_url, "count") as database_url:
        counted = measure(database_url, args.requests)
    for row, per_request in counted.items():
        # §21's rows against the plain proxied request, as `make bench` pairs them.
        against = f" ({counted['proxied'] / per_request:.3f}x proxied)" if row in _PAIRED else ""
        print(f"{row:>9}: {per_request:,.0f} instructions per request{against}")


if __name__ == "__main__":
    main()
