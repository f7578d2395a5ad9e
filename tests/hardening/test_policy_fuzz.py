"""Fuzzed policy sets reloaded under load: 0 crashes, 0 5xx, the last good set kept."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections import Counter
from pathlib import Path

import aiohttp

from tests.hardening.scale import pick
from tests.support import ROOT, RecordingUpstream, bearer, make_config, running_gateway, unique


def _alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\nupstream: core\nroutes: []\n"


BROKEN = [
    _alias_bomb(),
    "upstream: core\nroutes: {methods: [GET]}\n",
    "upstream: core\nroutes:\n  - {methods: GET, path: /x}\n",
    "upstream: core\nroutes:\n  - {methods: [GET], path: /x, public: yes-please}\n",
    "upstream: core\nupstream: core\nroutes: []\n",
    "upstream: core\nroutes:\n  - {methods: [GET], path: /v1/me}\n",
    "upstream: [core]\nroutes: []\n",
    "# " + "x" * (1024 * 1024 + 10) + "\nroutes: []\n",
    "\x00\x01\x02 not yaml {{{{",
    "upstream: core\nroutes:\n  - !!python/object/apply:os.system ['true']\n",
    "- 1\n- 2\n",
    "upstream: core\nroutes:\n  - {methods: [GET], path: '/a/{x}/{x}'}\n",
]


def _random_garbage(rng: random.Random) -> str:
    text = rng.choice(BROKEN)
    position = rng.randrange(len(text))
    return (
        text[:position] + rng.choice(["{", "]", ":", "\t", "&a", "*b", "\n  -"]) + text[position:]
    )


async def test_fuzzed_reloads_under_traffic(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> None:
    directory = tmp_path / "live"
    shutil.copytree(ROOT / "policies", directory)
    config = make_config(tmp_path, database_url, upstream.url, policies=directory)
    rng = random.Random(7)
    reloads = pick(100, 1000)
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
        key = (await gateway.create_key(unique("user"), ["me:read"]))["key"]
        policies = gateway.runtime.policies
        good_version = policies.current.version
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                async with http.get(gateway.proxy + "/v1/me", headers=bearer(key)) as response:
                    statuses[response.status] += 1

        clients = [asyncio.create_task(traffic()) for _ in range(4)]
        refused = 0
        for i in range(reloads):
            text = BROKEN[i % len(BROKEN)] if i < len(BROKEN) else _random_garbage(rng)
            (directory / "fuzz.yaml").write_text(text, errors="surrogateescape")
            if await policies.reload_off_loop():
                good_version = policies.current.version  # a mutation can be valid YAML policy
            else:
                refused += 1
        stop.set()
        await asyncio.gather(*clients)
        kept = policies.current.version
    print(f"\nfuzzed reloads: {reloads} reloads, {refused} refused, statuses {dict(statuses)}")
    assert refused >= reloads * 0.9
    assert kept == good_version  # the last good set, never a refused one
    assert set(statuses) == {200}
