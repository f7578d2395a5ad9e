"""`gateway serve`: one process, or N sharing the ports (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys

import asyncpg

from gateway.foundation.config import Config
from gateway.observability.diagnostics import configure_logging
from gateway.resources import Options
from gateway.runtime import Gateway

log = logging.getLogger("gateway")
WORKER_ENV = "GATEWAY_WORKER"


def serve(config: Config, workers: int, loop: str) -> int:
    configure_logging(config.logging.format)
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
    _keep_freed_memory()
    options = Options(
        handle_sighup=True, reuse_port=bool(os.environ.get(WORKER_ENV)), freeze_gc=True
    )
    asyncio.run(_run(config, options))
    return 0


async def _run(config: Config, options: Options) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully: `/readyz` answers 503 at once
    while the listeners keep serving for `shutdown.drain_seconds` (balancers take the
    host out), then accepting stops, requests in flight finish, and the usage counts,
    last-use times and credit shares are written back. A second signal skips the rest
    of the drain."""
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    async with contextlib.AsyncExitStack() as stack:
        gateway = await _start(stack, config, options, stop)
        if gateway is None:
            return
        await stop.wait()
        gateway.readiness.draining = True
        drain = config.shutdown.drain_seconds
        log.info("stopping: /readyz answers 503; still serving for %g s", drain)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), drain)
        log.info("stopping: no new connections; finishing requests in flight")
    log.info("stopped")


# The database may still be starting beside the gateway (compose, a pod): a start that
# times out waiting for it is tried again, 1, 2, 4 and 8 s later, before giving up.
_START_ATTEMPTS = 5
_NOT_YET = (TimeoutError, ConnectionError, asyncpg.CannotConnectNowError)


async def _start(
    stack: contextlib.AsyncExitStack, config: Config, options: Options, stop: asyncio.Event
) -> Gateway | None:
    """The running gateway, or None when a signal came while waiting to start."""
    for attempt in range(_START_ATTEMPTS):
        try:
            return await stack.enter_async_context(Gateway(config, options))
        except _NOT_YET as exc:
            if attempt == _START_ATTEMPTS - 1:
                raise
            wait = 2**attempt
            log.warning("the database did not answer at start (%s): trying again in %d s",
                        exc.__class__.__name__, wait)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return None
    return None


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _keep_freed_memory() -> None:
    """Tell glibc's allocator to keep freed memory instead of handing it back at once.

    With its defaults, each 64 KiB body freed at the top of the heap is trimmed back
    to the kernel and the next one faults its pages in again: a third of the CPU time
    of a 64 KiB response (bench/: 164 → 111 µs per request at 64 connections). The
    process keeps at most a few MiB more; allocations under 1 MiB come from the heap.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return  # not glibc: nothing to tune
    mallopt(_M_TRIM_THRESHOLD, 16 * 1024 * 1024)
    mallopt(_M_TOP_PAD, 4 * 1024 * 1024)
    mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)


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
