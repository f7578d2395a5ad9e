"""Delivering the outbox (§17), from every process, each attempt by one of them.

A process claims due deliveries in one statement (`FOR UPDATE SKIP LOCKED`) that also
moves their due time past the attempt's timeout (twice it, plus 5 s): if the process
dies mid-attempt, another one tries again then. At least once: a 2xx ends a delivery; anything else is
tried again on the retry schedule (±20 % jitter), then marked failed. Requests never
wait for any of it: delivery has its own task, HTTP session and connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg
from standardwebhooks import Webhook
from yarl import URL

from gateway.foundation.config import Webhooks as Settings
from gateway.foundation.database import UNAVAILABLE
from gateway.observability.metrics import Metrics
from gateway.webhooks.destinations import CheckingResolver, DestinationRefused, Destinations

log = logging.getLogger("gateway.webhooks")
BATCH = 16

_CLAIM = """
WITH due AS (
    SELECT id FROM webhook_deliveries
     WHERE status = 'pending' AND next_attempt_at <= now()
     ORDER BY next_attempt_at LIMIT $1
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries AS d
       SET attempts = d.attempts + 1, last_attempt_at = now(),
           next_attempt_at = now() + make_interval(secs => $2)
      FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.endpoint_id, d.attempts
)
SELECT c.id, c.event_id, c.attempts, e.payload, p.url, p.secret,
       CASE WHEN p.previous_until > now() THEN p.previous_secret END AS previous_secret
  FROM claimed AS c
  JOIN webhook_events AS e ON e.id = c.event_id
  JOIN webhook_endpoints AS p ON p.id = c.endpoint_id
"""
_DONE = """
UPDATE webhook_deliveries
   SET status = $2, last_status = $3, last_error = $4,
       next_attempt_at = now() + make_interval(secs => $5)
 WHERE id = $1 AND attempts = $6
"""
# A recorded outcome is a status code or one of these words, never a library's text:
# the deliveries are readable by whoever registers a URL, and an error text would
# tell them what answers at an address they could not otherwise reach.
REFUSED = "destination-not-allowed"
_OLDEST = (
    "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
    " FROM webhook_deliveries WHERE status = 'pending'"
)


@dataclass(frozen=True, slots=True)
class Attempt:
    delivery_id: object
    event_id: str
    attempt: int
    payload: str
    url: str
    secrets: tuple[str, ...]  # the current one, and the previous one during its grace


def signature(attempt: Attempt, sent_at: datetime) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated (the
    standardwebhooks reference library signs)."""
    return " ".join(
        Webhook(secret).sign(attempt.event_id, sent_at, attempt.payload)
        for secret in attempt.secrets
    )


class Deliverer:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._destinations = Destinations(settings.allowed_networks)

    def wake(self, *_: object) -> None:
        """A new event was committed (NOTIFY): look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
        async with aiohttp.ClientSession(
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(
                limit=BATCH, resolver=CheckingResolver(self._destinations), use_dns_cache=False
            ),
        ) as session:
            self._session = session
            while True:
                try:
                    done = await self.deliver_due()
                    await self._observe_backlog()
                except UNAVAILABLE as exc:
                    log.warning("webhooks: database unavailable: %s", exc.__class__.__name__)
                    done = 0
                if done < BATCH:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._settings.poll_seconds)

    async def deliver_due(self) -> int:
        """Claim and attempt what is due (at most one batch); how many were attempted."""
        # Past the attempt's timeout with room to write its outcome: only a dead
        # attempt's delivery is claimed again.
        lease = 2 * self._settings.timeout_seconds + 5
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_CLAIM, BATCH, lease)
        attempts = [
            Attempt(
                row["id"],
                row["event_id"],
                row["attempts"],
                row["payload"],
                row["url"],
                tuple(s for s in (row["secret"], row["previous_secret"]) if s),
            )
            for row in rows
        ]
        await asyncio.gather(*(self._attempt(attempt) for attempt in attempts))
        return len(attempts)

    async def _attempt(self, attempt: Attempt) -> None:
        status, error = await self._post(attempt)
        if status is not None and 200 <= status < 300:
            outcome, wait = "delivered", 0.0
        elif error == REFUSED:
            outcome, wait = "failed", 0.0  # it will not be allowed on a retry either
        else:
            schedule = self._settings.retry_schedule_seconds
            if attempt.attempt > len(schedule):
                outcome, wait = "failed", 0.0
            else:
                outcome = "pending"
                wait = schedule[attempt.attempt - 1] * random.uniform(0.8, 1.2)
        self._metrics.webhook_deliveries.labels(
            "delivered" if outcome == "delivered" else "failed" if outcome == "failed" else "retry"
        ).inc()
        async with self._pool.acquire() as conn:
            await conn.execute(
                _DONE, attempt.delivery_id, outcome, status, error, wait, attempt.attempt
            )

    async def _post(self, attempt: Attempt) -> tuple[int | None, str | None]:
        """The answer's status, or the word for why there was none."""
        assert self._session is not None
        if not self._literal_allowed(attempt.url):
            return None, REFUSED
        sent_at = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "gateway-webhooks/1",
            "webhook-id": attempt.event_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature(attempt, sent_at),
        }
        try:
            async with self._session.post(
                attempt.url, data=attempt.payload.encode(), headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status, None
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, DestinationRefused):
                return None, REFUSED
            if isinstance(exc.os_error, ConnectionRefusedError):
                return None, "connection-refused"
            return None, "connection-error"
        except aiohttp.InvalidURL:
            return None, REFUSED  # a numeric host spelling aiohttp will not connect to
        except aiohttp.ClientError:
            return None, "connection-error"

    def _literal_allowed(self, url: str) -> bool:
        """An address written in the URL is connected to without the resolver: checked here."""
        host = URL(url).raw_host or ""
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return True  # a name: the resolver checks what it resolves to
        return self._destinations.allows(host)

    async def _observe_backlog(self) -> None:
        async with self._pool.acquire() as conn:
            oldest = await conn.fetchval(_OLDEST)
        self._metrics.webhook_oldest_pending.set(float(oldest or 0))
