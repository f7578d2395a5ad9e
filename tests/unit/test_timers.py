from __future__ import annotations

import asyncio

from gateway.foundation.timers import Deadline


async def test_a_moved_deadline_fires_once_where_it_moved_to() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    deadline = Deadline(loop, lambda: fired.append(loop.time()))
    started = loop.time()
    deadline.set(0.05)
    await asyncio.sleep(0.03)
    deadline.set(0.05)  # now due at ~0.08, not 0.05
    await asyncio.sleep(0.03)
    assert fired == []
    await asyncio.sleep(0.06)
    assert len(fired) == 1 and fired[0] - started >= 0.08


async def test_a_cleared_deadline_does_not_fire_and_can_be_set_again() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadline = Deadline(loop, lambda: fired.append("x"))
    deadline.set(0.02)
    deadline.clear()
    await asyncio.sleep(0.05)
    assert fired == []
    deadline.set(0.02)
    await asyncio.sleep(0.05)
    assert fired == ["x"]
    deadline.set(0.02)
    deadline.stop()
    await asyncio.sleep(0.05)
    assert fired == ["x"]
