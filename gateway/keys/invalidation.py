"""Cross-process cache invalidation through PostgreSQL LISTEN/NOTIFY.

Writers call `notify()` inside their transaction, so the message goes out on
commit. Each gateway process listens on a dedicated connection; NOTIFY is not
replayed, so when that connection is lost and comes back the whole cache is
flushed.

NOTIFY reaches the writer's own listener a moment after the commit, so a client
that changed a key and at once used it could still be served from the cache the
change invalidated. `Listener.caught_up` closes that gap: the writer sends an echo
of its own and waits for it — PostgreSQL delivers notifications in commit order, so
once the echo is back every earlier change has been applied.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.foundation import failover
from gateway.foundation.database import INVALIDATION_CHANNEL, UNAVAILABLE, Conn
from gateway.keys.store import KeyStore
from gateway.observability.metrics import Metrics

CHANNEL = INVALIDATION_CHANNEL
log = logging.getLogger("gateway.invalidation")
_ECHO_SECONDS = 1.0


async def notify_key(conn: Conn, key_id: str, key_hash: bytes) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"key:{key_id}:{key_hash.hex()}")


async def notify_user(conn: Conn, user_id: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"member:{user_id}")


def apply(
    store: KeyStore,
    payload: str,
    metrics: Metrics,
    credits_changed: Callable[[str], None] | None = None,
    webhooks_due: Callable[[], None] | None = None,
    organization_policy: Callable[[str], None] | None = None,
) -> None:
    kind, _, rest = payload.partition(":")
    if kind == "key":
        key_id, _, digest = rest.partition(":")
        store.invalidate_key(key_id, bytes.fromhex(digest) if digest else None)
    elif kind == "member":
        store.invalidate_user(rest)
    elif kind == "credits":
        if credits_changed is not None:
            credits_changed(rest)
    elif kind == "webhooks":
        if webhooks_due is not None:
            webhooks_due()
        return
    elif kind == "orgpolicy":
        if organization_policy is not None:
            organization_policy(rest)
    else:
        return
    metrics.invalidations.labels(kind).inc()


class Listener:
    """Keeps one LISTEN connection alive; flushes the cache whenever it is re-established."""

    def __init__(
        self, url: str, store: KeyStore, metrics: Metrics, *, check_interval: float = 0.5
    ) -> None:
        self._url = url
        self._store = store
        self._metrics = metrics
        self._interval = check_interval
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.reconnects = 0
        # Told a key's credits changed (its id); told None when messages may have been missed.
        self.credits_changed: Callable[[str | None], None] | None = None
        self.webhooks_due: Callable[[], None] | None = None  # a new event is in the outbox
        # Told an organization's key policy changed (`DAYS:ORG`); None: changes may have
        # been missed (a reconnection), read them all again.
        self.organization_policy: Callable[[str | None], None] | None = None
        self._echoes: dict[str, asyncio.Future[None]] = {}

    async def caught_up(self, conn: Conn) -> None:
        """Return once this process has applied every change committed before the
        call (within `_ECHO_SECONDS`: a listener that lost messages flushes anyway)."""
        if not self.connected.is_set():
            return
        token = secrets.token_hex(8)
        echo = asyncio.get_running_loop().create_future()
        self._echoes[token] = echo
        try:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"echo:{token}")
            await asyncio.wait_for(echo, _ECHO_SECONDS)
        except TimeoutError:
            log.warning("invalidation listener did not echo within %s s", _ECHO_SECONDS)
        finally:
            del self._echoes[token]

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        kind, _, token = str(payload).partition(":")
        if kind == "echo":
            echo = self._echoes.get(token)  # another process's echo is not ours to wait for
            if echo is not None and not echo.done():
                echo.set_result(None)
            return
        apply(
            self._store,
            str(payload),
            self._metrics,
            self.credits_changed,
            self.webhooks_due,
            self.organization_policy,
        )

    def _on_lost(self, _conn: Any) -> None:
        self._lost.set()

    async def run(self) -> None:
        first = True
        while True:
            conn = await self._connect()
            if not first:
                # Messages sent while we were away are gone: forget everything.
                self._store.flush()
                if self.credits_changed is not None:
                    self.credits_changed(None)
                if self.organization_policy is not None:
                    self.organization_policy(None)
                self.reconnects += 1
                self._metrics.invalidations.labels("flush").inc()
                log.warning("invalidation listener reconnected; cache flushed")
            first = False
            self.connected.set()
            try:
                await self._watch(conn)
            finally:
                self.connected.clear()
                conn.terminate()
            # The pool's connections lead where this one did: to a server that may be
            # gone (a failover) and would keep each request waiting for its timeout.
            await self._store.replace_connections()

    async def _connect(self) -> asyncpg.Connection:
        delay = 0.05
        while True:
            try:
                conn = await failover.connect(self._url, timeout=2)
                self._lost.clear()
                conn.add_termination_listener(self._on_lost)
                await conn.add_listener(CHANNEL, self._on_notify)
                return conn
            except UNAVAILABLE:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the connection is gone or stops answering."""
        while not conn.is_closed():
            try:
                await asyncio.wait_for(self._lost.wait(), self._interval)
                return
            except TimeoutError:
                pass
            try:
                await conn.fetchval("SELECT 1", timeout=self._interval * 2)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return
