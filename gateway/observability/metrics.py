"""Prometheus metrics, one registry per application (no global collectors).

Labels are bounded: route names (from the policy, `unmatched` otherwise), status
codes and fixed names. Never a raw path, never a credential.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.total = 0.0


class Latencies:
    """`gateway_request_duration_seconds`, a histogram counted here (compiled) and shown
    through prometheus_client's custom-collector interface: its own `Histogram.observe`
    is interpreted Python taking a lock per bucket; with it, applying a request's
    figures cost 11,800 instructions, 5 % of a proxied request's (callgrind)."""

    name = "gateway_request_duration_seconds"

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        # An attribute, not the module's constant: mypyc rebuilds a tuple of floats
        # from its C doubles wherever the constant is used.
        self._bounds: tuple[float, ...] = _LATENCY_BUCKETS

    def observe(self, route: str, endpoint: str, seconds: float) -> None:
        series = self._series.get((route, endpoint))
        if series is None:
            series = self._series[route, endpoint] = _Series()
        series.counts[bisect_left(self._bounds, seconds)] += 1  # le: seconds <= bound
        series.total += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            self.name, "Time from request to response start", labels=["route", "endpoint"]
        )
        bounds = [repr(bound) for bound in _LATENCY_BUCKETS] + ["+Inf"]  # as prometheus_client
        for labels, series in sorted(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, series.counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric(list(labels), buckets, series.total)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests proxied or decided, by endpoint (proxy or a decision endpoint)",
            ["route", "status", "endpoint"],
            registry=r,
        )
        self.latency = Latencies()
        r.register(self.latency)
        self.cache = Counter(
            "gateway_cache_events",
            "Cache hits, misses and evictions",
            ["cache", "event"],
            registry=r,
        )
        self.db_query = Histogram(
            "gateway_db_query_duration_seconds", "Database query time", ["query"], registry=r
        )
        self.policy_reloads = Counter(
            "gateway_policy_reloads", "Policy reload attempts", ["result"], registry=r
        )
        self.policy_routes = Gauge("gateway_policy_routes", "Routes in the active set", registry=r)
        self.invalidations = Counter(
            "gateway_invalidations", "Cache invalidations received", ["kind"], registry=r
        )
        self.denials = Counter("gateway_denials", "Requests refused", ["reason"], registry=r)
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused by a rate limit", ["limit"], registry=r
        )
        self.rate_limit_backend_errors = Counter(
            "gateway_rate_limit_backend_errors",
            "Failed calls to the shared rate limit backend (Redis)",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=r,
        )
        self.webhook_oldest_pending = Gauge(
            "gateway_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not yet delivered or failed",
            registry=r,
        )
        # What /readyz says in its body: 1 available, 0 not (Redis: absent when unused).
        self.dependency_up = Gauge(
            "gateway_dependency_up",
            "Whether a dependency answers: database, redis (1 yes, 0 no)",
            ["dependency"],
            registry=r,
        )
        self.trace_spans_exported = Counter(
            "gateway_trace_spans_exported", "Spans delivered to the OTLP collector", registry=r
        )
        self.trace_spans_dropped = Counter(
            "gateway_trace_spans_dropped",
            "Spans not delivered: queue_full (the collector fell behind) or export_failed",
            ["reason"],
            registry=r,
        )
        self.usage_dropped = Counter(
            "gateway_usage_dropped_requests",
            "Requests whose usage counts were let go: the database refused them too long",
            registry=r,
        )
        self._request_children: dict[tuple[str, int, str], Any] = {}
        self._pending: list[tuple[str, int, float, str | None, str]] = []
        # Series people alert on exist from the start, at 0: "no data" is not "no failures".
        for result in ("success", "failure"):
            self.policy_reloads.labels(result)
        for kind in ("key", "member", "flush"):
            self.invalidations.labels(kind)
        for outcome in ("delivered", "retry", "failed"):
            self.webhook_deliveries.labels(outcome)
        for reason in ("queue_full", "export_failed"):
            self.trace_spans_dropped.labels(reason)
        self._cache_children = {}
        for cache in ("key", "key_id", "unknown_key", "membership"):
            for event in ("hit", "miss", "eviction"):
                self._cache_children[cache, event] = self.cache.labels(cache, event)
        self._cache_counts: dict[tuple[str, str], int] = dict.fromkeys(self._cache_children, 0)
        self._lookup_sources: list[Callable[[], list[tuple[str, str, int]]]] = []

    # Called from the SDK's export thread as well: prometheus counters take their lock.
    def spans_dropped(self, count: int, reason: str) -> None:
        self.trace_spans_dropped.labels(reason).inc(count)

    def spans_exported(self, count: int) -> None:
        self.trace_spans_exported.inc(count)

    # The keystore's Observer protocol (evictions; hits and misses come through
    # `count_lookups`): counted here, applied by `drain()` — a prometheus counter
    # takes a lock per increment.
    def cache_event(self, cache: str, event: str) -> None:
        self._cache_counts[cache, event] += 1

    def count_lookups(self, source: Callable[[], list[tuple[str, str, int]]]) -> None:
        """Cache hits and misses counted where they happen (`KeyStore.lookups`): each
        `drain()` takes what `source()` counted since it last asked."""
        self._lookup_sources.append(source)

    def query_seconds(self, query: str, seconds: float) -> None:
        self.db_query.labels(query).observe(seconds)

    def observe_request(
        self, route: str, status: int, seconds: float, reason: str | None, endpoint: str = "proxy"
    ) -> None:
        """Queue one request's figures; `drain()` applies them (before every scrape)."""
        self._pending.append((route, status, seconds, reason, endpoint))
        if len(self._pending) >= 4096:
            self.drain()

    def drain(self) -> None:
        # Applied in a batch, away from the request: the histogram's bucket search
        # and the locks cost several times more per request with cold caches.
        for source in self._lookup_sources:
            for cache, kind, taken in source():
                self._cache_counts[cache, kind] += taken
        for event, count in self._cache_counts.items():
            if count:
                self._cache_children[event].inc(count)
                self._cache_counts[event] = 0
        pending, self._pending = self._pending, []
        counted: dict[Any, int] = {}  # a counter's child → its requests in this batch
        latency = self.latency
        for route, status, seconds, reason, endpoint in pending:
            child = self._request_children.get((route, status, endpoint))
            if child is None:
                child = self.requests.labels(route, str(status), endpoint)
                self._request_children[route, status, endpoint] = child
            counted[child] = counted.get(child, 0) + 1
            latency.observe(route, endpoint, seconds)
            if reason is not None:
                self.denials.labels(reason).inc()
        for child, count in counted.items():
            child.inc(count)

    def render(self) -> bytes:
        self.drain()
        return generate_latest(self.registry)
