"""Stopping background loops at shutdown: bounded, and a loop that failed says so."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.resources import stop_background


async def _deaf(stop: asyncio.Event) -> None:
    """A loop whose cancellation is swallowed, as a library may do: it runs on."""
    while not stop.is_set():
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def _failed() -> None:
    raise RuntimeError("the loop broke")


async def test_a_loop_that_ignores_cancellation_holds_shutdown_only_briefly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    deaf = asyncio.create_task(_deaf(stop), name="deaf")
    polite = asyncio.create_task(asyncio.sleep(3600), name="polite")
    await asyncio.sleep(0.05)  # both running, the deaf one inside its try
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gateway"):
        await stop_background(deaf, polite, within=0.3)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert polite.cancelled() and not deaf.done()
    assert "background task deaf did not stop within 0.3 s" in caplog.text
    stop.set()
    await deaf


async def test_a_loop_that_failed_raises_its_error_when_stopped() -> None:
    failed = asyncio.create_task(_failed())
    other = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="the loop broke"):
        await stop_background(failed, other)
    assert other.cancelled()  # the others were stopped all the same
