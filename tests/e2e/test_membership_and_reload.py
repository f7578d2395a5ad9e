"""member_of (BOLA) checks and hot policy reload, against real PostgreSQL and upstream."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    ROOT,
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    running_gateway,
    unique,
)


@pytest.mark.parametrize(
    ("kind", "path", "scopes"),
    [
        ("organization", "/v1/organizations/{id}/projects", ["projects:read"]),
        ("project", "/v1/projects/{id}", ["projects:read"]),
    ],
)
async def test_membership_decides_and_changes_take_effect(
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
    kind: str,
    path: str,
    scopes: list[str],
) -> None:
    user = unique("user")
    key = (await gateway.create_key(user, scopes))["key"]
    own, foreign = unique(kind), unique(kind)
    url = gateway.proxy + path.format(id=own)

    async def status(target: str) -> int:
        async with http.get(target, headers=bearer(key)) as response:
            return response.status

    assert await status(url) == 403  # not a member yet (and now cached)
    await gateway.member(user, kind, own)
    await _eventually(lambda: status(url), 200)
    assert await status(gateway.proxy + path.format(id=foreign)) == 403
    await gateway.member(user, kind, own, member=False)
    await _eventually(lambda: status(url), 403)
    # The removal travels by NOTIFY (within 1 s, not before it commits): a request in
    # between may still pass; once refused, nothing more reaches the upstream.
    forwarded = [r.raw_path for r in upstream.received]
    assert await status(url) == 403
    assert [r.raw_path for r in upstream.received] == forwarded
    assert path.format(id=foreign) not in forwarded
    assert forwarded.count(path.format(id=own)) >= 1


async def _eventually(probe, expected: int, within: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        got = await probe()
        if got == expected:
            return
        assert time.monotonic() < deadline, f"still {got}, expected {expected}"
        await asyncio.sleep(0.05)


def _policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "live-policies"
    shutil.copytree(ROOT / "policies", directory)
    return directory


NEW_ROUTE = (
    "upstream: core\nroutes:\n  - {name: added, methods: [GET], path: /v1/added, public: true}\n"
)
BROKEN = {
    "syntax": "upstream: core\nroutes:\n  - {methods: [GET], path: /v1/x\n",
    "unknown scope": "upstream: core\nroutes:\n  - {methods: [GET], path: /v1/x, scopes: [nope]}\n",
    "unknown field": "upstream: core\nroutes:\n  - {methods: [GET], path: /v1/x, colour: red}\n",
    "duplicate name": "upstream: core\nroutes:\n  - {name: me, methods: [GET], path: /v1/x}\n",
    "ambiguity": "upstream: core\nroutes:\n  - {methods: [GET], path: /v1/me}\n",
}


async def test_good_change_applies_within_two_seconds_and_broken_sets_are_refused(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    directory = _policy_dir(tmp_path)
    config = make_config(tmp_path, database_url, upstream.url, policies=directory)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:

        async def status(path: str) -> int:
            async with http.get(gateway.proxy + path) as response:
                return response.status

        assert await status("/v1/added") == 404
        started = time.monotonic()
        (directory / "added.yaml").write_text(NEW_ROUTE)
        await _eventually(lambda: status("/v1/added"), 200, within=2.0)
        assert time.monotonic() - started < 2.0
        reloads = gateway.runtime.metrics.policy_reloads
        for name, text in BROKEN.items():
            failures = reloads.labels("failure")._value.get()
            (directory / "broken.yaml").write_text(text)
            deadline = time.monotonic() + 2
            while reloads.labels("failure")._value.get() == failures:
                assert time.monotonic() < deadline, name
                assert await status("/v1/added") == 200
                await asyncio.sleep(0.05)
            assert await status("/v1/added") == 200, name
            assert await status("/v1/public/still") == 200, name
        (directory / "broken.yaml").unlink()


async def test_hundred_reloads_under_traffic_give_no_5xx(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    directory = _policy_dir(tmp_path)
    config = make_config(tmp_path, database_url, upstream.url, policies=directory)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        policies = gateway.runtime.policies
        stop = asyncio.Event()
        statuses: list[int] = []

        async def traffic() -> None:
            while not stop.is_set():
                async with http.get(gateway.proxy + "/v1/me", headers=bearer(key)) as response:
                    statuses.append(response.status)

        clients = [asyncio.create_task(traffic()) for _ in range(4)]
        for i in range(100):
            (directory / "churn.yaml").write_text(
                NEW_ROUTE.replace("added", f"added{i}") if i % 2 else BROKEN["syntax"]
            )
            assert policies.reload() == bool(i % 2)
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.gather(*clients)
        assert policies.current.router.match("GET", ["v1", "added99"]) is not None
    assert statuses and set(statuses) == {200}
