"""schemathesis against the admin API's own OpenAPI document: 0 server errors.

Starts `gateway serve` on free loopback ports (database: GATEWAY_DATABASE_URL, else
the embedded one under fuzz/state) and runs `schemathesis run` against it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TOKEN = "fuzz-admin-token"  # noqa: S105 - a throwaway local token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    proxy, admin = free_port(), free_port()
    config = HERE / "admin-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(HERE / "state"),
                "listen": {"host": "127.0.0.1", "port": proxy},
                "admin": {"host": "127.0.0.1", "port": admin},
                "database": {"url": os.environ.get("GATEWAY_DATABASE_URL")},
                "policies": {"dir": str(HERE.parent / "policies")},
            }
        )
    )
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": TOKEN}
    env.pop("GATEWAY_DATABASE_URL", None)
    with (HERE / "admin-api.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        base = f"http://127.0.0.1:{admin}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):  # noqa: S310 - loopback
                    break
            except OSError:
                time.sleep(0.1)
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{base}/admin/v1/openapi.json",
                "--url",
                base,
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                os.environ.get("FUZZ_EXAMPLES", "200"),
            ],
            check=False,
        )
        return result.returncode
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    raise SystemExit(main())
