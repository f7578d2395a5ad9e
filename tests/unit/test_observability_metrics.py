from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.edge.record import RequestIds
from gateway.observability.metrics import _LATENCY_BUCKETS, Metrics

# On a bound, just past it, below the first, above the last, and in between.
_SECONDS = [0.0005, 0.001, 0.0010001, 0.003, 0.05, 0.7, 1.0, 9.99, 10.0, 42.0]


def _samples(exposition: bytes, name: str) -> dict[str, float]:
    found = {}
    for line in exposition.decode().splitlines():
        if line.startswith(name) and not line.startswith(f"{name}_created"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def test_request_latency_is_exposed_as_prometheus_client_would() -> None:
    metrics, registry = Metrics(), CollectorRegistry()
    reference = Histogram(
        "gateway_request_duration_seconds",
        "Time from request to response start",
        ["route", "endpoint"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )
    for index, seconds in enumerate(_SECONDS):
        route, endpoint = ("api", "proxy") if index % 3 else ("admin", "forward-auth")
        metrics.observe_request(route, 200, seconds, None, endpoint)
        reference.labels(route, endpoint).observe(seconds)
    name = "gateway_request_duration_seconds"
    ours = _samples(metrics.render(), name)
    theirs = _samples(generate_latest(registry), name)
    assert ours == theirs
    assert ours['gateway_request_duration_seconds_count{endpoint="proxy",route="api"}'] == 6


def test_request_ids_count_in_sixteen_hex_digits_after_the_prefix() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(9000)]
    prefix = made[0][:16]
    assert [int(made_id[16:], 16) for made_id in made] == list(range(1, 9001))
    assert all(len(made_id) == 32 and made_id.startswith(prefix) for made_id in made)
