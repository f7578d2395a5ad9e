"""The gateway's spans, made by hand where a request starts and ends (the own HTTP
server has no auto-instrumentation), not per stage.

A request continues its client's W3C `traceparent` / `tracestate` (the SDK's
parent-based sampler) or starts a trace, sampled at `sample_ratio`. Every request
gets a trace id — for the access log and the `traceparent` sent upstream — but only
a sampled one makes a recording span; the children (a key lookup that reaches
PostgreSQL, the upstream exchange) exist only under a recording parent, found
through OpenTelemetry's context (attached for sampled requests only).

The common case is a request with no trace context that is not sampled (99 of 100
at the default ratio). The SDK would spend some 5 µs making a span that records
nothing and 2-5 µs more writing its `traceparent`: a tenth of a cached-key request.
So the root decision is taken here first (`random() < sample_ratio`), and an
unsampled new trace is two random ids and a formatted `traceparent`, not an SDK
span; the sampled ones (the SDK's root sampler then always samples) and every
request that brought a context go through the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.foundation.config import Tracing as Settings
from gateway.tracing.export import BoundedExport, Dropped, Exported

_PROPAGATOR = TraceContextTextMapPropagator()
_NEW_TRACE = otel_context.Context()  # no parent: a root span
# The client's trace context is replaced (ours names the gateway's span as the parent).
PROPAGATED = frozenset({"traceparent", "tracestate"})
_SHUTDOWN_SECONDS = 2.0


class RequestTrace:
    """One request's trace: an SDK server span (recording or not) and, when recording,
    the context attached for its children until `end`; or, for an unsampled new
    trace, only its ids."""

    __slots__ = ("_ids", "_span", "_token", "_tracer")

    def __init__(
        self,
        span: trace.Span | None,
        token: Token[otel_context.Context] | None,
        tracer: trace.Tracer,
        ids: tuple[int, int] = (0, 0),
    ) -> None:
        self._span = span
        self._token = token
        self._tracer = tracer
        self._ids = ids  # (trace id, span id) when there is no span

    @property
    def recording(self) -> bool:
        return self._token is not None

    @property
    def trace_id(self) -> str:
        if self._span is None:
            return format(self._ids[0], "032x")
        return format(self._span.get_span_context().trace_id, "032x")

    def upstream_span(self, method: str, url: str) -> AbstractContextManager[trace.Span]:
        """The upstream exchange's client span, for a recording request only. `url`: the
        upstream's base and the path; the query stays out of traces, as out of logs."""
        attributes = {"http.request.method": method, "url.full": url.partition("?")[0]}
        return self._tracer.start_as_current_span(
            method, kind=SpanKind.CLIENT, attributes=attributes
        )

    def upstream_headers(self, exchange: trace.Span | None = None) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) for the upstream: the exchange's span as the
        parent when there is one, else this request's (unsampled: flags 00)."""
        if self._span is None:
            trace_id, span_id = self._ids
            return [("traceparent", f"00-{trace_id:032x}-{span_id:016x}-00")]
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(exchange or self._span))
        return list(carrier.items())

    def end(self, status: int, attributes: Mapping[str, Any]) -> None:
        if self._token is None or self._span is None:
            return
        otel_context.detach(self._token)
        span = self._span
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.set_attribute("http.response.status_code", status)
        route = attributes.get("http.route")
        if route:
            span.update_name(f"{attributes.get('http.request.method')} {route}")
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class Tracing:
    """The tracer provider (not the process-global one), its sampler and export."""

    def __init__(self, settings: Settings, dropped: Dropped, exported: Exported) -> None:
        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint,
            headers=settings.headers or None,
            timeout=settings.export_timeout_seconds,
        )
        self._export = BoundedExport(exporter, settings.max_queue_size, dropped, exported)
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            # A root reaches the SDK only once `begin` has sampled it.
            sampler=ParentBased(ALWAYS_ON),
        )
        self._provider.add_span_processor(self._export)
        self._tracer = self._provider.get_tracer("gateway")
        self._ratio = settings.sample_ratio
        self._random = random.Random()  # seeded from os.urandom; this provider's own

    def begin(self, headers: Mapping[str, str], method: str, path: str) -> RequestTrace:
        if "traceparent" in headers:
            parent = _PROPAGATOR.extract(headers)
        elif self._random.random() < self._ratio:
            parent = _NEW_TRACE
        else:
            ids = (self._random.getrandbits(128) or 1, self._random.getrandbits(64) or 1)
            return RequestTrace(None, None, self._tracer, ids)
        span = self._tracer.start_span(
            method,
            parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        if not span.is_recording():
            return RequestTrace(span, None, self._tracer)
        token = otel_context.attach(trace.set_span_in_context(span))
        return RequestTrace(span, token, self._tracer)

    @contextlib.contextmanager
    def client_span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[trace.Span | None]:
        """A client span under the current request's (an exception leaving it marks it
        as an error), or None when the request is not sampled."""
        if not trace.get_current_span().is_recording():
            yield None
            return
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            yield span

    async def close(self) -> None:
        """Send what is queued, for at most a couple of seconds: a collector that is
        down must not hold the process's stop up (the export thread is a daemon)."""
        done = asyncio.get_running_loop().create_future()

        def shut_down() -> None:
            try:
                self._provider.shutdown()
            finally:
                done.get_loop().call_soon_threadsafe(_finish, done)

        threading.Thread(target=shut_down, name="tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), _SHUTDOWN_SECONDS)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
