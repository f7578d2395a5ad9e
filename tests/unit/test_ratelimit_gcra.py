"""GCRA against an independent reference model, with a fake clock (the one place a fake
is right), and the local backend's all-or-nothing charging and bounded memory."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.ratelimits import RateLimit, policy_header
from gateway.ratelimit.gcra import decide, state_header, whole_seconds
from gateway.ratelimit.local import LocalBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeakyBucket:
    """The reference: a bucket of `burst` that drains `limit` per `per_seconds`, in exact
    fractions; a request fits if one more unit does not overflow it."""

    def __init__(self, limit: int, per: int, burst: int) -> None:
        self.rate = Fraction(limit, per)
        self.burst = burst
        self.level = Fraction(0)
        self.at = Fraction(0)

    def admit(self, at: Fraction) -> bool:
        self.level = max(Fraction(0), self.level - (at - self.at) * self.rate)
        self.at = at
        if self.level + 1 > self.burst:
            return False
        self.level += 1
        return True


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 50),
    per=st.integers(1, 10),
    burst=st.integers(1, 50),
    gaps=st.lists(st.integers(0, 2000), min_size=1, max_size=200),
)
def test_gcra_matches_a_leaky_bucket(limit: int, per: int, burst: int, gaps: list[int]) -> None:
    rule = RateLimit("r", limit, float(per), burst, "key")
    reference = LeakyBucket(limit, per, burst)
    tat: float | None = None
    at = Fraction(0)
    for gap in gaps:
        at += Fraction(gap, 1000)  # arrivals on a millisecond grid
        new_tat, verdict = decide(rule, tat, float(at))
        # On a millisecond grid an overflow is never within GCRA's 1e-9 float slack.
        assert verdict.allowed == reference.admit(at)
        if verdict.allowed:
            tat = new_tat
            assert 0 <= verdict.remaining < burst
        else:
            assert verdict.retry_after > 0  # and `tat` stays: nothing consumed


def test_burst_then_steady_rate() -> None:
    rule = RateLimit("per-key", 10, 1.0, 5, "key")
    clock = Clock()
    backend = LocalBackend(clock)
    admitted = [backend.take_now([(rule, "k")])[0].allowed for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3  # the burst, then refusals
    refused = backend.take_now([(rule, "k")])[0]
    assert 0 < refused.retry_after <= 0.1 + 1e-9 and whole_seconds(refused.retry_after) == 1
    clock.now += 0.1  # one interval: one more request
    assert [backend.take_now([(rule, "k")])[0].allowed for _ in range(2)] == [True, False]


def test_a_refused_request_consumes_nothing_and_all_limits_must_admit() -> None:
    tight = RateLimit("tight", 1, 60.0, 1, "key")
    loose = RateLimit("loose", 100, 1.0, 100, "key")
    clock = Clock()
    backend = LocalBackend(clock)
    assert all(v.allowed for v in backend.take_now([(tight, "k"), (loose, "k")]))
    verdicts = backend.take_now([(tight, "k"), (loose, "k")])
    assert [v.allowed for v in verdicts] == [False, True]
    # loose was not charged by the refused request: 99 remain, as after the first.
    assert backend.take_now([(loose, "k")])[0].remaining == 98


def test_subjects_are_independent_and_idle_ones_are_forgotten() -> None:
    rule = RateLimit("guessing", 20, 1.0, 20, "ip")
    clock = Clock()
    backend = LocalBackend(clock)
    for n in range(10_000):
        assert backend.take_now([(rule, f"10.0.{n // 256}.{n % 256}")])[0].allowed
    assert len(backend) == 10_000
    clock.now += 1.0  # every quota is whole again
    assert backend.sweep() == 0


def test_memory_is_bounded_even_with_busy_subjects() -> None:
    rule = RateLimit("daily", 1000, 86400.0, 1000, "key")
    backend = LocalBackend(Clock(), max_subjects=1000)
    for n in range(5000):
        backend.take_now([(rule, f"k{n}")])
    assert len(backend) <= 1000


def test_headers_follow_the_draft() -> None:
    per_key = RateLimit("per-key", 100, 1.0, 200, "key")
    daily = RateLimit("daily", 100000, 86400.0, 100000, "key")
    assert policy_header((per_key, daily)) == '"per-key";q=100;w=1, "daily";q=100000;w=86400'
    _, verdict = decide(per_key, None, 0.0)
    assert state_header(verdict) == '"per-key";r=199;t=1'
