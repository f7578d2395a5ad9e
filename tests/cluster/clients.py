"""The clients of the cluster tests: the admin API of one host, and a bounded load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.cluster.topology import ADMIN_TOKEN, BALANCER, GATEWAYS

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FRONT = f"http://{BALANCER}"


def admin(name: str) -> str:
    return f"http://{GATEWAYS[name]}:8081"


async def new_key(http: aiohttp.ClientSession, **extra: Any) -> dict[str, Any]:
    body = {"user_id": f"cl-{time.monotonic_ns()}", "name": "k", "scopes": ["me:read"], **extra}
    async with http.post(admin("g1") + "/admin/v1/keys", json=body, headers=HEADERS) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def status_of(http: aiohttp.ClientSession, url: str, key: str) -> int:
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
        await response.read()
        return response.status


async def load(
    url: str,
    key: str,
    seconds: float,
    connections: int = 16,
    pause: float = 0.0,
    until: asyncio.Event | None = None,
) -> list[tuple[float, int]]:
    """(time since start, status) of every request made through `url` for `seconds`,
    or until `until` is set; a connection error counts as status 0."""
    seen: list[tuple[float, int]] = []
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while (now := time.monotonic() - started) < seconds and not (
                until is not None and until.is_set()
            ):
                try:
                    status = await status_of(http, url, key)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                seen.append((now, status))
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(client() for _ in range(connections)))
    return seen
