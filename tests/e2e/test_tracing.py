"""Traces (§19) against a real OTLP/HTTP receiver on loopback that decodes the
protobuf the SDK's exporter sends."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.otlpreceiver import CLIENT, SERVER, OtlpReceiver
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    routes_dir,
    running_gateway,
)

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


Start = Callable[..., AbstractAsyncContextManager[RunningGateway]]


@pytest.fixture
def traced(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, otlp: OtlpReceiver
) -> Start:
    """Starts a gateway tracing to `otlp` (every new trace sampled unless told),
    with the decision endpoints on; `policies` for a policy directory of one's own."""

    def start(policies: Path | None = None, **tracing: Any) -> Any:
        settings = {"enabled": True, "otlp_endpoint": otlp.url, "sample_ratio": 1.0, **tracing}
        decisions = {"enabled": True, "listen": {"host": "127.0.0.1", "port": 0}}
        config = make_config(
            tmp_path, database_url, upstream.url, policies, tracing=settings, decisions=decisions
        )
        return running_gateway(config)

    return start


@pytest.fixture
async def gateway(traced: Start) -> AsyncIterator[RunningGateway]:
    async with traced() as running:
        yield running


def sent_upstream(upstream: RecordingUpstream) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of the `traceparent` the upstream was sent."""
    found = TRACEPARENT.fullmatch(upstream.received[-1].headers["traceparent"])
    assert found is not None
    return found[1], found[2], bool(int(found[3], 16) & 1)


async def test_a_sampled_request_has_a_server_span_a_lookup_and_the_upstream_exchange(
    gateway: RunningGateway,
    http: aiohttp.ClientSession,
    upstream: RecordingUpstream,
    otlp: OtlpReceiver,
) -> None:
    key = await gateway.create_key("u-traced", ["me:read"])
    async with http.get(gateway.proxy + "/v1/me?secret=1", headers=bearer(key["key"])) as r:
        assert r.status == 200
    await otlp.wait_for(3)
    (server,) = otlp.by_name("GET /v1/me")
    (lookup,) = otlp.by_name("SELECT api_keys")
    (exchange,) = [s for s in otlp.spans if s.kind == CLIENT and s.name == "GET"]
    assert server.kind == SERVER and server.parent_span_id == "" and server.service == "gateway"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.route"] == "/v1/me"
    assert server.attributes["url.path"] == "/v1/me"  # the query stays out
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gateway.key_id"] == key["id"]
    assert server.attributes["gateway.user_id"] == "u-traced"
    assert "gateway.reason" not in server.attributes
    assert lookup.kind == CLIENT and lookup.attributes["db.system.name"] == "postgresql"
    for child in (lookup, exchange):
        assert (child.trace_id, child.parent_span_id) == (server.trace_id, server.span_id)
    assert exchange.attributes["http.response.status_code"] == 200
    assert exchange.attributes["url.full"] == upstream.url + "/v1/me"
    # The upstream's parent is the exchange span; the access log carries the trace id.
    assert sent_upstream(upstream) == (server.trace_id, exchange.span_id, True)
    await asyncio.sleep(0.1)
    assert gateway.log_lines()[-1]["trace_id"] == server.trace_id
    assert key["key"] not in str(otlp.spans)


async def test_a_cached_key_makes_no_lookup_span_and_a_refusal_says_why(
    gateway: RunningGateway, http: aiohttp.ClientSession, otlp: OtlpReceiver
) -> None:
    key = await gateway.create_key("u-cached", ["me:read"])
    for _ in range(2):
        async with http.get(gateway.proxy + "/v1/me", headers=bearer(key["key"])) as r:
            assert r.status == 200
    async with http.get(gateway.proxy + "/v1/organizations", headers=bearer(key["key"])) as r:
        assert r.status == 403
    await otlp.wait_for(6)
    assert len(otlp.by_name("SELECT api_keys")) == 1
    (refused,) = otlp.by_name("GET /v1/organizations")
    assert refused.attributes["gateway.reason"] == "insufficient-scope"
    assert refused.attributes["http.response.status_code"] == 403


async def test_a_client_traceparent_is_continued_with_its_sampling_decision(
    traced: Start, upstream: RecordingUpstream, otlp: OtlpReceiver, http: aiohttp.ClientSession
) -> None:
    async with traced(sample_ratio=0.0) as gateway:
        # Sampled by the client: recorded though the gateway's own ratio is 0.
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        headers = {"traceparent": parent, "tracestate": "vendor=1"}
        async with http.get(gateway.proxy + "/v1/public/x", headers=headers) as r:
            assert r.status == 200
        trace_id, parent_id, sampled = sent_upstream(upstream)
        assert (trace_id, sampled) == (CLIENT_TRACE, True) and parent_id != CLIENT_SPAN
        assert upstream.received[-1].headers["tracestate"] == "vendor=1"
        assert len(upstream.received[-1].headers.getall("traceparent")) == 1
        await otlp.wait_for(2)
        (server,) = [s for s in otlp.spans if s.kind == SERVER]
        assert (server.trace_id, server.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
        assert server.attributes["http.route"] == "/v1/public/{rest...}"
        # Not sampled by the client, or no client context at ratio 0: the trace id still
        # travels (flags 00) and is logged, and nothing is exported.
        unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
        async with http.get(gateway.proxy + "/v1/public/y", headers={"traceparent": unsampled}):
            pass
        assert sent_upstream(upstream)[::2] == (CLIENT_TRACE, False)
        async with http.get(gateway.proxy + "/v1/public/z"):
            pass
        fresh, _, sampled = sent_upstream(upstream)
        assert fresh != CLIENT_TRACE and not sampled
        await asyncio.sleep(1.5)  # past the export interval
        assert len(otlp.spans) == 2
        assert gateway.log_lines()[-1]["trace_id"] == fresh


async def test_the_decision_endpoints_trace_the_request_they_were_asked_about(
    gateway: RunningGateway, http: aiohttp.ClientSession, otlp: OtlpReceiver
) -> None:
    key = await gateway.create_key("u-decided", ["me:read"])
    assert gateway.runtime.decisions_address is not None
    host, port = gateway.runtime.decisions_address
    asked = {"X-Original-Method": "GET", "X-Original-URI": "/v1/me?x=1", **bearer(key["key"])}
    url = f"http://{host}:{port}/decisions/auth-request"
    async with http.get(url, headers=asked) as r:
        assert r.status == 200
    await otlp.wait_for(2)
    (server,) = [s for s in otlp.spans if s.kind == SERVER]
    assert server.attributes["gateway.endpoint"] == "auth-request"
    assert server.attributes["gateway.asked.method"] == "GET"
    assert server.attributes["gateway.asked.path"] == "/v1/me"
    assert server.attributes["http.route"] == "/v1/me"
    assert server.attributes["gateway.key_id"] == key["id"]
    (lookup,) = otlp.by_name("SELECT api_keys")
    assert lookup.parent_span_id == server.span_id


async def test_a_collector_that_is_down_or_slow_never_holds_a_request_and_drops_are_counted(
    traced: Start, otlp: OtlpReceiver, http: aiohttp.ClientSession
) -> None:
    otlp.delay = 30  # a collector that takes the batch and never answers in time
    async with traced(max_queue_size=8, export_timeout_seconds=1) as gateway:
        slowest = 0.0
        for _ in range(200):
            started = time.perf_counter()
            async with http.get(gateway.proxy + "/v1/public/x") as r:
                assert r.status == 200
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.5
        dropped = await _dropped(http, gateway)
        assert dropped["queue_full"] >= 200 - 2 * 8
        deadline = time.monotonic() + 10
        while dropped["export_failed"] == 0:  # the batch that timed out
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
            dropped = await _dropped(http, gateway)
        started = time.perf_counter()
    assert time.perf_counter() - started < 4  # stopping does not wait for the collector


async def _dropped(http: aiohttp.ClientSession, gateway: RunningGateway) -> dict[str, float]:
    async with http.get(gateway.admin + "/metrics") as r:
        text = await r.text()
    found = re.findall(r'gateway_trace_spans_dropped_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


async def test_tracing_off_leaves_the_client_trace_context_alone(
    tmp_path: Path,
    database_url: str,
    upstream: RecordingUpstream,
    http: aiohttp.ClientSession,
) -> None:
    async with running_gateway(make_config(tmp_path, database_url, upstream.url)) as gateway:
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        async with http.get(gateway.proxy + "/v1/public/x", headers={"traceparent": parent}):
            pass
        assert upstream.received[-1].headers["traceparent"] == parent
        async with http.get(gateway.proxy + "/v1/public/x"):
            pass
        assert "traceparent" not in upstream.received[-1].headers
        await asyncio.sleep(0.1)
        assert gateway.log_lines()[-1]["trace_id"] is None


async def test_a_websocket_handshake_carries_the_trace_and_its_span_ends_at_the_hand_over(
    tmp_path: Path,
    traced: Start,
    upstream: RecordingUpstream,
    otlp: OtlpReceiver,
    http: aiohttp.ClientSession,
) -> None:
    policies = routes_dir(
        tmp_path, "upstream: core\nroutes:\n  - {methods: [GET], path: /ws, public: true}\n"
    )
    async with traced(policies) as gateway:
        async with http.ws_connect(gateway.proxy + "/ws") as ws:
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=2) == "echo:hello"
        (server,) = await otlp.wait_for(1)
        assert server.name == "GET /ws" and server.attributes["http.response.status_code"] == 101
        trace_id, parent_id, sampled = sent_upstream(upstream)
        assert (trace_id, parent_id, sampled) == (server.trace_id, server.span_id, True)
