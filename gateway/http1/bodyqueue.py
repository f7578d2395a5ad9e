"""One flow-controlled queue of body chunks, for a request body arriving from a
client and for a response body arriving from an upstream.

The producer (a protocol's `data_received`) puts chunks; past `HIGH_WATER`
buffered bytes it is told to pause reading, and below `LOW_WATER` to resume.
The consumer takes chunks in order, waiting when there are none. How long it
may wait is the consumer's business: it arms its own deadline, which ends the
wait by failing the queue.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Reading(Protocol):
    """The producer's connection, told to stop and start reading."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class BodyQueue:
    __slots__ = ("_buffered", "_chunks", "_reading", "_waiter", "complete", "error", "received")

    def __init__(self, reading: Reading) -> None:
        # The connection, not its two bound methods: a queue is made for every request
        # and every answer, most of them bodiless, and nearly none ever pauses.
        self._reading = reading
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self.received = 0  # bytes put in all, for a minimum rate
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # the body ended; what is buffered is all of it
        self.error: BaseException | None = None  # why it will never end

    # --- the producer ------------------------------------------------------------------

    def put(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered > HIGH_WATER:
            self._reading.pause_reading()
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The body will not end (a lost connection, a broken framing, a deadline)."""
        if self.complete or self.error is not None:
            return
        self.error = error
        self._wake()

    # --- the consumer ------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether `take` answers without waiting."""
        return bool(self._chunks) or self.complete or self.error is not None

    def waiting(self) -> asyncio.Future[None]:
        """A future done when `ready` may have changed."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        return waiter

    def take(self) -> bytes:
        """The next chunk; b"" once the body is complete; raises why it failed."""
        if self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            if self._buffered < LOW_WATER:
                self._reading.resume_reading()
            return chunk
        if self.error is not None:
            raise self.error
        return b""

    def take_all(self) -> bytes:
        """Everything buffered, once the body is complete (a small body's one read)."""
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def get(self) -> bytes:
        while not self.ready():
            await self.waiting()
        return self.take()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
