"""Where keys are used from, by network (§21): the new-network notice.

A network is a client address's /24 (IPv4) or /48 (IPv6), by default. Each process
notes per key the networks it sees, in memory: no write per request. Each last-use
flush writes the new (key, network) pairs in one statement, which also decides —
under the row's lock, so across all hosts — which of them no host had recorded
within `remember_days`: each of those is announced once, as the audit event and
webhook `key.new_network`. What a process has noted is forgotten every hour, so that
the last use of a network is written again at most hourly per process.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.audit import events as audit
from gateway.audit.events import Actor
from gateway.foundation.config import NewNetworkNotice
from gateway.foundation.database import UNAVAILABLE, Conn, bounded

log = logging.getLogger("gateway.networks")
MAX_PER_KEY = 1000  # networks a key's record holds; past that, new ones are not kept
_FORGET_SECONDS = 3600.0
_MAX_ADDRESSES = 65_536  # client addresses whose network is remembered (a cache)
SYSTEM = Actor("system")

# One row per pair; `noticed_in` set to this transaction when the network is new to
# the key, or was last seen longer ago than the window: RETURNING tells those apart.
_RECORD = """
WITH seen AS (
    SELECT * FROM unnest($1::uuid[], $2::cidr[], $3::float8[]) AS s(key_id, network, at)
     WHERE EXISTS (SELECT 1 FROM api_keys AS k WHERE k.id = s.key_id)
       AND (EXISTS (SELECT 1 FROM key_networks AS x
                     WHERE x.key_id = s.key_id AND x.network = s.network)
            OR (SELECT count(*) FROM key_networks AS x WHERE x.key_id = s.key_id) < $5)
)
INSERT INTO key_networks AS n (key_id, network, first_seen_at, last_seen_at, noticed_in)
SELECT key_id, network, to_timestamp(at), to_timestamp(at), txid_current() FROM seen
ON CONFLICT (key_id, network) DO UPDATE SET
    last_seen_at = greatest(n.last_seen_at, EXCLUDED.last_seen_at),
    first_seen_at = CASE WHEN n.last_seen_at < EXCLUDED.last_seen_at - make_interval(days => $4)
                         THEN EXCLUDED.first_seen_at ELSE n.first_seen_at END,
    noticed_in = CASE WHEN n.last_seen_at < EXCLUDED.last_seen_at - make_interval(days => $4)
                      THEN txid_current() ELSE n.noticed_in END
RETURNING key_id::text, network::text, first_seen_at, noticed_in = txid_current() AS new
"""


class NetworkLog:
    """This process's notes of (key, network) uses, written in batches."""

    def __init__(self, settings: NewNetworkNotice, clock: Callable[[], float] = time.time):
        self._settings = settings
        self._clock = clock
        self._network_of: dict[str, str] = {}
        self._seen: dict[str, set[str]] = {}
        self._forget_at = time.monotonic() + _FORGET_SECONDS
        self.pending: dict[tuple[str, str], float] = {}  # (key id, network) → first use here

    def note(self, key_id: str, client: str) -> None:
        """A use of the key from the client address (on the request path: no I/O)."""
        network = self._network_of.get(client)
        if network is None:
            network = self._classify(client)
        seen = self._seen.get(key_id)
        if seen is None:
            seen = self._seen[key_id] = set()
        elif network in seen or len(seen) >= MAX_PER_KEY:
            return
        if network:
            seen.add(network)
            self.pending[key_id, network] = self._clock()

    def _classify(self, client: str) -> str:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            network = ""  # no address (a Unix socket): no network to note
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            prefix = (
                self._settings.ipv4_prefix if address.version == 4 else self._settings.ipv6_prefix
            )
            network = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
        if len(self._network_of) >= _MAX_ADDRESSES:
            self._network_of.clear()
        self._network_of[client] = network
        return network

    async def flush(self, pool: asyncpg.Pool, seconds: float = 5.0) -> int:
        """Write the noted pairs; announce those new to their key. How many were new."""
        if time.monotonic() >= self._forget_at:
            self._forget_at = time.monotonic() + _FORGET_SECONDS
            self._seen.clear()
        pending, self.pending = self.pending, {}
        if not pending:
            return 0
        try:
            return await bounded(pool, lambda conn: self._record(conn, pending), seconds)
        except UNAVAILABLE as exc:
            log.warning("key networks not written (kept): %s", exc.__class__.__name__)
            self.pending = {**pending, **self.pending}
            return 0

    async def _record(self, conn: Conn, pending: dict[tuple[str, str], float]) -> int:
        keys = [key for key, _ in pending]
        networks = [network for _, network in pending]
        async with conn.transaction():
            rows = await conn.fetch(
                _RECORD, keys, networks, list(pending.values()),
                self._settings.remember_days, MAX_PER_KEY,
            )  # fmt: skip
            new = [row for row in rows if row["new"]]
            for row in new:
                first_seen = row["first_seen_at"].astimezone(UTC).isoformat()
                await audit.record(
                    conn, SYSTEM, "key.new_network", user_id=await _owner(conn, row["key_id"]),
                    key_id=row["key_id"],
                    details={"network": row["network"], "first_seen_at": first_seen},
                )  # fmt: skip
        return len(new)


async def _owner(conn: Conn, key_id: str) -> str | None:
    found = await conn.fetchval("SELECT user_id FROM api_keys WHERE id = $1::uuid", key_id)
    return None if found is None else str(found)


async def recent(conn: Conn, key_id: str, days: int = 30) -> list[dict[str, Any]]:
    """The networks a key was used from in the last `days`, the latest first."""
    since = datetime.now(UTC) - timedelta(days=days)
    rows = await conn.fetch(
        "SELECT network::text AS network, first_seen_at, last_seen_at FROM key_networks"
        " WHERE key_id = $1::uuid AND last_seen_at >= $2 ORDER BY last_seen_at DESC",
        key_id,
        since,
    )
    return [
        {
            "network": row["network"],
            "first_seen_at": row["first_seen_at"].astimezone(UTC).isoformat(),
            "last_seen_at": row["last_seen_at"].astimezone(UTC).isoformat(),
        }
        for row in rows
    ]
