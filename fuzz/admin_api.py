"""schemathesis against the admin API's own OpenAPI document: 0 server errors.

Starts `gateway serve` on free loopback ports (database: GATEWAY_DATABASE_URL, else
the embedded one under fuzz/state) and runs `schemathesis run` against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.testing import environment, free_port, serving

HERE = Path(__file__).resolve().parent
TOKEN = "fuzz-admin-token"  # noqa: S105 - a throwaway local token


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
    env = environment(GATEWAY_ADMIN_TOKEN=TOKEN, GATEWAY_DATABASE_URL=None)
    base = f"http://127.0.0.1:{admin}"
    with serving(config, HERE / "admin-api.log", base, env=env):
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


if __name__ == "__main__":
    raise SystemExit(main())
