"""The Redis backend: limits shared by every process and host, decided in process.

Each process holds a *lease* of tokens per (limit, subject) that Redis granted
from the one shared GCRA state (a Lua script on Redis's own clock, so hosts'
clocks do not matter). A request spends a token locally — no round trip — and a
background loop tops leases up in one pipelined call per sync interval, asking
for about twice what each subject used in the last interval. Redis never grants
more than the global allowance, so processes together admit at most the limit
plus the tokens leased but not yet spent. A request waits for Redis only when its
subject has no tokens here and the shared state may still have room (its first
request here, or a slow subject between top-ups); a subject known to be over its
limit is refused here until the shared state says it has room again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisClusterException, RedisError

from gateway.observability.metrics import Metrics
from gateway.policy.ratelimits import RateLimit
from gateway.ratelimit.gcra import Verdict
from gateway.ratelimit.local import Ask, LocalBackend
from gateway.ratelimit.redis_client import RedisClient, drop_idle_connections

log = logging.getLogger("gateway.ratelimit")
# RedisClusterException is not a RedisError: a slot no node serves, among others.
REDIS_DOWN = (RedisError, RedisClusterException, OSError, TimeoutError)
IDLE_LEASE_SECONDS = 60.0
# KEYS[1]: the subject's TAT. ARGV: interval and tolerance (µs), tokens wanted.
# Returns the tokens granted and how far the TAT now runs ahead of Redis's now (µs).
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval + 0.000001)
local granted = math.max(0, math.min(want, room))
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {granted, string.format('%.0f', tat - now)}
"""


class BackendUnavailable(Exception):
    """`on_backend_error: closed` and Redis cannot be reached: 503."""


@dataclass
class _Lease:
    limit: RateLimit
    tokens: int = 0
    tat_at: float = 0.0  # the shared TAT, on this process's clock
    used: int = 0  # requests seen since the last top-up
    last_used: float = 0.0


class SharedBackend:
    def __init__(
        self,
        client: RedisClient,
        *,
        sync_interval: float,
        on_error: str,
        fallback: LocalBackend,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._redis = client
        self._script = client.register_script(LEASE_SCRIPT)
        self._interval = sync_interval
        self._on_error = on_error
        self._fallback = fallback
        self._metrics = metrics
        self._clock = clock
        self._leases: dict[tuple[str, str], _Lease] = {}
        self.down = False

    async def take(self, asks: Sequence[Ask]) -> list[Verdict]:
        if self.down:
            return self._degraded(asks)
        now = self._clock()
        # A subject's first request here, or a lease spent while the shared state may
        # still have room (a slow subject asks for little at a time): ask Redis now
        # rather than refuse. A lease known to be exhausted is refused without asking.
        wanted = [
            (limit, subject, _first_want(limit, self._interval))
            for limit, subject in asks
            if _must_ask(self._leases.get((limit.identity, subject)), now)
        ]
        if wanted:
            try:
                try:
                    await self._lease(wanted)
                except REDIS_DOWN:
                    # Pooled connections Redis closed (it restarted) fail once each:
                    # drop the idle ones; only a failure on a new one means Redis is gone.
                    await drop_idle_connections(self._redis)
                    await self._lease(wanted)
            except REDIS_DOWN as exc:
                self._went_down(exc)
                return self._degraded(asks)
            now = self._clock()
        leases = [self._leases[limit.identity, subject] for limit, subject in asks]
        verdicts = [_verdict(lease, now) for lease in leases]
        for lease in leases:
            lease.used += 1
            lease.last_used = now
        if all(verdict.allowed for verdict in verdicts):
            for lease in leases:
                lease.tokens -= 1
        return verdicts

    def _degraded(self, asks: Sequence[Ask]) -> list[Verdict]:
        if self._on_error == "closed":
            raise BackendUnavailable
        if self._on_error == "open":
            return [Verdict(limit, True, limit.burst, 0.0, 0.0) for limit, _ in asks]
        return self._fallback.take_now(asks)

    async def run(self) -> None:
        """Top leases up every sync interval; notice Redis going and coming back."""
        task = asyncio.current_task()
        assert task is not None
        # redis-py can swallow a cancellation that lands inside its own timeouts, or
        # turn it into one of its errors: the loop then ran on and shutdown waited for
        # it forever (1 cancellation in 4 at a 1 ms interval). A pending cancel request
        # ends the loop whatever redis-py made of it.
        while not task.cancelling():
            await asyncio.sleep(self._interval)
            try:
                await self._top_up()
            except REDIS_DOWN as exc:
                if task.cancelling():
                    break
                self._went_down(exc)
                await asyncio.sleep(min(1.0, self._interval * 10))
                continue
            if self.down:
                self.down = False
                log.warning("rate limit backend (redis) is back: limits are shared again")
        raise asyncio.CancelledError

    async def _top_up(self) -> None:
        if self.down:
            await self._redis.ping()
        now = self._clock()
        wanted = []
        for key, lease in list(self._leases.items()):
            if now - lease.last_used > IDLE_LEASE_SECONDS:
                del self._leases[key]  # its unspent tokens were charged: a small, bounded waste
                continue
            # Tokens ahead of need only for a busy subject of a limit that allows a token
            # per sync interval or more; else they sit on one host while another refuses
            # (5 a minute behind a round-robin balancer refused the fifth request).
            busy = lease.used >= 2 and lease.limit.interval <= self._interval
            target = min(lease.limit.burst, max(1, 2 * lease.used))
            lease.used = 0
            if busy and lease.tokens < target / 2:
                wanted.append((lease.limit, key[1], target - lease.tokens))
        if wanted:
            await self._lease(wanted)

    async def _lease(self, wanted: Sequence[tuple[RateLimit, str, int]]) -> None:
        answers = await self._run_scripts(wanted)
        now = self._clock()
        for (limit, subject, _), (granted, ahead) in zip(wanted, answers, strict=True):
            lease = self._leases.setdefault((limit.identity, subject), _Lease(limit, last_used=now))
            lease.tokens += int(granted)
            lease.tat_at = now + int(ahead) / 1e6

    async def _run_scripts(self, wanted: Sequence[tuple[RateLimit, str, int]]) -> list[Any]:
        """One script call per subject (one key each, so a Cluster routes each to its
        slot's node), pipelined. A Cluster pipeline refuses EVALSHA (its nodes need
        not have the script: the first call, a replica just promoted), so there the
        script itself is sent; elsewhere the pipeline loads it when the server lacks it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for limit, subject, want in wanted:
                args = [round(limit.interval * 1e6), round(limit.tolerance * 1e6), want]
                if isinstance(pipe, ClusterPipeline):
                    pipe.eval(LEASE_SCRIPT, 1, _key(limit, subject), *args)
                else:
                    await self._script(keys=[_key(limit, subject)], args=args, client=pipe)
            return list(await pipe.execute())

    def _went_down(self, exc: BaseException) -> None:
        self._metrics.rate_limit_backend_errors.inc()
        if not self.down:
            self.down = True
            log.warning(
                "rate limit backend (redis) unreachable (%s): on_backend_error=%s until it returns",
                exc.__class__.__name__,
                self._on_error,
            )


def _key(limit: RateLimit, subject: str) -> str:
    return f"gateway:ratelimit:{limit.identity}:{subject}"


def _first_want(limit: RateLimit, sync_interval: float) -> int:
    """What a subject's first lease asks for: what the limit allows in one sync interval."""
    return max(1, min(limit.burst, math.ceil(sync_interval / limit.interval)))


def _must_ask(lease: _Lease | None, now: float) -> bool:
    """No lease yet, or an empty one whose shared state had room at its last answer."""
    if lease is None:
        return True
    return lease.tokens <= 0 and lease.tat_at - lease.limit.tolerance + lease.limit.interval <= now


def _verdict(lease: _Lease, now: float) -> Verdict:
    limit = lease.limit
    if lease.tokens > 0:
        # What remains is this process's other leased tokens and the shared room that
        # no process has leased yet (as of Redis's last answer), not the lease alone: a
        # lease is often one token.
        ahead = max(0.0, lease.tat_at - now)
        room = max(0, math.floor((limit.tolerance - ahead) / limit.interval + 1e-9))
        return Verdict(limit, True, lease.tokens - 1 + room, ahead, 0.0)
    wait = max(limit.interval, lease.tat_at - limit.tolerance - now)
    return Verdict(limit, False, 0, max(0.0, lease.tat_at - now), wait)
