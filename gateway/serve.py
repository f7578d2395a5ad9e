"""`gateway serve`: one process, or N sharing the ports (SO_REUSEPORT)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from aiohttp import web

from gateway.app import Options, create_app
from gateway.config import Config
from gateway.observability.diagnostics import configure_logging

log = logging.getLogger("gateway")
WORKER_ENV = "GATEWAY_WORKER"


def serve(config: Config, workers: int, loop: str) -> int:
    configure_logging()
    if workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and not os.environ.get(WORKER_ENV):
        return _supervise(workers, loop)
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                print("gateway: --loop uvloop: uvloop is not installed", file=sys.stderr)
                return 2
        else:
            uvloop.install()
    options = Options(
        handle_sighup=True, reuse_port=bool(os.environ.get(WORKER_ENV)), freeze_gc=True
    )
    web.run_app(
        create_app(config, options),
        host=config.admin.host,
        port=config.admin.port,
        reuse_port=options.reuse_port or None,
        print=None,
        access_log=None,
        shutdown_timeout=30,
    )
    return 0


def _supervise(workers: int, loop: str) -> int:
    """Start N workers sharing the ports (SO_REUSEPORT); forward signals; wait."""
    argv = [sys.executable, "-m", "gateway", *sys.argv[1:], "--loop", loop]
    env = {**os.environ, WORKER_ENV: "1"}
    children = [subprocess.Popen(argv, env=env) for _ in range(workers)]  # noqa: S603

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
