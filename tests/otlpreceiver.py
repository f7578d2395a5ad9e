"""A real OTLP/HTTP trace receiver on loopback: it decodes each export with the
protocol's own protobuf classes (`opentelemetry-proto`) and keeps the spans.

`python -m tests.otlpreceiver PORT` runs one alone (the benchmark's collector).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int  # Span.SpanKind
    trace_id: str  # hex, as in traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    status_code: int  # Status.StatusCode


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name")),
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                    )
                )
    return out


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    delay: float = 0.0  # seconds before each answer: a collector that is slow
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        decoded = ExportTraceServiceRequest.FromString(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        self.exports += 1
        self.spans += _spans(decoded)
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def by_name(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """At least `count` spans (the exporter sends a batch about every second)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.spans) < count:
            assert asyncio.get_running_loop().time() < deadline, (count, self.spans)
            await asyncio.sleep(0.05)
        return self.spans


def application(receiver: OtlpReceiver) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(PATH, receiver.handle)
    return app


SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT


if __name__ == "__main__":
    web.run_app(application(OtlpReceiver()), host="127.0.0.1", port=int(sys.argv[1]))
