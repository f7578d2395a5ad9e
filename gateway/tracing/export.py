"""Export that never holds a request up: ended spans wait in a bounded queue for the
SDK's batch processor (its own thread), and what cannot be sent is counted.

The SDK's batch processor drops the oldest span when its queue is full, logging a
warning for each: under a collector outage at full load that is thousands of log
lines a second and no count. So admission is decided here, before the SDK's queue
can fill: a span beyond `capacity` is dropped and counted, and a batch the exporter
could not deliver (collector down or slow, after the exporter's own retries) is
counted the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

log = logging.getLogger("gateway.tracing")

# (how many spans, why: "queue_full" or "export_failed") / (how many were delivered)
Dropped = Callable[[int, str], None]
Exported = Callable[[int], None]


class _Waiting:
    """Spans handed to the batch processor and not yet taken for export (the request
    thread adds, the export thread takes away)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._count = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self._count >= self._capacity:
                return False
            self._count += 1
            return True

    def taken(self, count: int) -> None:
        with self._lock:
            self._count = max(0, self._count - count)


class _CountingExporter(SpanExporter):
    def __init__(
        self, inner: SpanExporter, waiting: _Waiting, dropped: Dropped, exported: Exported
    ) -> None:
        self._inner = inner
        self._waiting = waiting
        self._dropped = dropped
        self._exported = exported

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._waiting.taken(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            log.exception("span export failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._exported(len(spans))
        else:
            self._dropped(len(spans), "export_failed")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedExport(SpanProcessor):
    """The SDK's `BatchSpanProcessor` behind an admission check that counts drops."""

    def __init__(
        self,
        exporter: SpanExporter,
        capacity: int,
        dropped: Dropped,
        exported: Exported,
        *,
        schedule_delay_millis: float = 1000,
    ) -> None:
        self._waiting = _Waiting(capacity)
        self._dropped = dropped
        self._batch = BatchSpanProcessor(
            _CountingExporter(exporter, self._waiting, dropped, exported),
            max_queue_size=capacity,
            max_export_batch_size=min(512, capacity),
            schedule_delay_millis=schedule_delay_millis,
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass  # nothing to do until it ends

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return  # recorded but not sampled: never exported (the batch processor's rule)
        if self._waiting.admit():
            self._batch.on_end(span)
        else:
            self._dropped(1, "queue_full")

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)
