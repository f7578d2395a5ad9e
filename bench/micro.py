"""Micro-benchmarks (plain timing, not tests): route match, key check, tokens, cache memory."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from collections.abc import Callable
from functools import partial

from gateway.foundation.config import Cache, Config, Tokens
from gateway.keys import format as key_format
from gateway.keys.store import KeyRecord, KeyStore
from gateway.policy.routing import Route, Router
from gateway.policy.scopes import Catalogue
from gateway.tokens.actor import Signer
from gateway.tokens.signing import SigningKey, algorithm_for, generate_pem

CATALOGUE = Catalogue({name: d.implies for name, d in Config().scopes.items()})


def per_second(fn: Callable[[], object], seconds: float = 1.0) -> float:
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            fn()
        count += 200
    return count / elapsed


def routes(n: int) -> Router:
    made = []
    for i in range(n):
        shape: tuple[str | None, ...] = ("v1", f"resource{i}", None, "items", None)
        made.append(
            Route(
                f"r{i}",
                frozenset({"GET"}),
                f"/v1/resource{i}/{{a}}/items/{{b}}",
                shape,
                ("a", "b"),
                frozenset(),
                (),
                False,
                "core",
                "bench:1",
            )
        )
    return Router(made)


def route_match() -> None:
    base = None
    for n in (10, 1_000, 10_000):
        router = routes(n)
        segments = ["v1", f"resource{n // 2}", "x", "items", "y"]
        rate = per_second(partial(router.match, "GET", segments))
        base = base or rate
        print(
            f"route match, {n:>6} routes: {1e6 / rate:6.2f} µs  ({base / rate:.2f}x the 10-route time)"
        )


def key_check() -> None:
    key = key_format.generate("gwk")
    store = KeyStore(None, CATALOGUE, Cache())  # type: ignore[arg-type]
    record = KeyRecord(
        str(uuid.uuid4()), "u", "n", ("me:read",), frozenset({"me:read"}), None, None
    )
    store._by_hash.put(key_format.digest(key), record)

    async def check() -> None:
        if key_format.is_well_formed(key, "gwk"):
            await store.by_hash(key_format.digest(key))

    async def run() -> float:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            for _ in range(200):
                await check()
            count += 200
        return count / (time.perf_counter() - started)

    rate = asyncio.run(run())
    print(f"key parse + hash + cache hit: {1e6 / rate:.2f} µs ({rate:,.0f}/s)")


def tokens() -> None:
    from cryptography.hazmat.primitives import serialization

    for alg in ("EdDSA", "ES256", "RS256"):
        private = serialization.load_pem_private_key(generate_pem(alg), password=None)
        signer = Signer([SigningKey("k", algorithm_for(private), private)], Tokens())  # type: ignore[arg-type]
        key_id = str(uuid.uuid4())
        token = signer.mint("u", key_id, ["me:read"], 300)
        mint_rate = per_second(partial(signer.mint, "u", key_id, ["me:read"], 300))
        verify_rate = per_second(partial(signer._decode, token))
        cached_rate = per_second(partial(signer.verify, token))
        print(
            f"{alg:>5}: mint {mint_rate:8,.0f}/s  verify {verify_rate:8,.0f}/s  "
            f"verify (cached) {cached_rate:10,.0f}/s  (one core)"
        )


def cache_memory(n: int = 100_000) -> None:
    store = KeyStore(None, CATALOGUE, Cache(max_entries=n))  # type: ignore[arg-type]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(n):
        record = KeyRecord(
            str(uuid.uuid4()),
            "user-" + uuid.uuid4().hex[:8],
            "name",
            ("projects:write",),
            CATALOGUE.closure(["projects:write"]),
            None,
            None,
        )
        store._by_hash.put(key_format.digest(key_format.generate("gwk")), record)
    after = tracemalloc.take_snapshot()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(f"memory per cached key at {n:,} keys: {used / n:.0f} bytes")


if __name__ == "__main__":
    route_match()
    key_check()
    tokens()
    cache_memory()
