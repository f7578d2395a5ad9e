from __future__ import annotations

from pathlib import Path

import pytest

from gateway.foundation.config import Config
from gateway.policy.loader import PolicyError, load_dir
from gateway.policy.scopes import Catalogue

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Catalogue({name: d.implies for name, d in Config().scopes.items()})
UPSTREAMS = frozenset({"core", "billing"})


def _load(tmp_path: Path, **files: str) -> list[str]:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    try:
        load_dir(tmp_path, CATALOGUE, UPSTREAMS)
    except PolicyError as exc:
        return exc.problems
    return []


def test_shipped_policies_load() -> None:
    policies = load_dir(ROOT / "policies", CATALOGUE, frozenset({"core"}))
    assert len(policies.router.routes) >= 10


GOOD_ROUTE = "  - {methods: [GET], path: /a, scopes: [me:read]}\n"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "upstream: core\nroutes:\n  - methods: [GET]\n    path: /a\n    scopez: [x]\n",
            5,
            "unknown field `scopez`",
        ),
        (
            "upstream: core\nroutes:\n"
            + GOOD_ROUTE
            + "  - {methods: [GET], path: /b, scopes: [nope]}\n",
            4,
            "unknown scope 'nope'",
        ),
        ("upstream: nowhere\nroutes:\n" + GOOD_ROUTE, 3, "unknown upstream 'nowhere'"),
        ("routes:\n" + GOOD_ROUTE, 2, "no upstream"),
        (
            "upstream: core\nroutes:\n  - {methods: [GET], path: '/o/{id}', member_of: {organization: org}}\n",
            3,
            "not a path parameter",
        ),
        (
            "upstream: core\nroutes:\n  - {methods: [get], path: /a}\n",
            3,
            "not an upper-case method",
        ),
        (
            "upstream: core\nroutes:\n  - {methods: [GET], path: '/a/{rest...}/b'}\n",
            3,
            "must be the last segment",
        ),
        (
            "upstream: core\nroutes:\n  - {methods: [GET], path: '/a//b'}\n",
            3,
            "invalid path segment",
        ),
        (
            "upstream: core\nroutes:\n  - {methods: [GET], path: /a, public: true, scopes: [me:read]}\n",
            3,
            "public route cannot",
        ),
        ("upstream: core\nroutes:\n  - {methods: [GET], path: /a\n", 4, "invalid YAML"),
        ("upstream: core\nupstream: core\nroutes: []\n", 2, "duplicate key 'upstream'"),
        ("upstream: core\nroutes:\n  - {methods: [GET], path: 12}\n", 3, "Expected `str`"),
        ("", 1, "empty policy file"),
    ],
)
def test_load_errors_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    [problem] = _load(tmp_path, p=text)
    assert problem.startswith(f"{tmp_path / 'p.yaml'}:{line}: "), problem
    assert reason in problem


def test_ambiguity_and_duplicate_names_across_files(tmp_path: Path) -> None:
    problems = _load(
        tmp_path,
        a="upstream: core\nroutes:\n  - {name: x, methods: [GET, POST], path: '/o/{id}'}\n",
        b="upstream: core\nroutes:\n  - {name: y, methods: [GET], path: '/o/{other}'}\n"
        "  - {name: x, methods: [DELETE], path: '/o/{id}'}\n",
    )
    assert any("ambiguous" in p and "a.yaml:3" in p and "b.yaml:3" in p for p in problems)
    assert any("duplicate route name 'x'" in p for p in problems)


def test_get_and_post_on_one_template_and_star_beside_get_are_fine(tmp_path: Path) -> None:
    assert not _load(
        tmp_path,
        a="upstream: core\nroutes:\n  - {methods: [GET], path: '/o/{id}'}\n"
        "  - {methods: [POST], path: '/o/{id}'}\n  - {methods: ['*'], path: '/o/{id}'}\n",
    )


def test_alias_bombs_are_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "\n".join(lines) + "\nupstream: core\nroutes: []\n"
    [problem] = _load(tmp_path, bomb=text)
    assert "more than" in problem


def test_oversized_files_are_refused(tmp_path: Path) -> None:
    [problem] = _load(tmp_path, big="# " + "x" * (1024 * 1024 + 1) + "\nroutes: []\n")
    assert "larger than" in problem


def test_control_characters_are_a_load_error_not_a_crash(tmp_path: Path) -> None:
    [problem] = _load(tmp_path, nul="\x00 routes: []\n")
    assert "invalid YAML" in problem


def test_a_collection_as_a_key_is_a_load_error(tmp_path: Path) -> None:
    # Found by fuzz/fuzz_policy.py.
    [problem] = _load(tmp_path, odd="{[a, b]: 1, routes: []}")
    assert "invalid YAML" in problem


LIMITS = """\
rate_limits:
  per-key: {limit: 100, per_seconds: 1, by: key, burst: 200}
  daily: {limit: 100000, per_seconds: 86400, by: key}
  guessing: {limit: 20, per_seconds: 1, by: ip}
rate_limit: [per-key]
upstream: core
routes:
  - {methods: [GET], path: /v1/search, scopes: [projects:read], rate_limit: [per-key, daily]}
  - {methods: [GET], path: /v1/status, public: true, rate_limit: [guessing]}
  - {methods: [GET], path: /v1/me, scopes: [me:read]}
  - {methods: [GET], path: /v1/free, scopes: [me:read], rate_limit: []}
"""


def test_rate_limits_resolve_with_file_defaults(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(LIMITS)
    policies = load_dir(tmp_path, CATALOGUE, UPSTREAMS)
    by_path = {route.template: route for route in policies.router.routes}
    assert [limit.name for limit in by_path["/v1/search"].rate_limits] == ["per-key", "daily"]
    assert [limit.name for limit in by_path["/v1/status"].rate_limits] == ["guessing"]
    assert [limit.name for limit in by_path["/v1/me"].rate_limits] == ["per-key"]
    assert by_path["/v1/free"].rate_limits == ()
    daily = policies.rate_limits["daily"]
    assert (daily.limit, daily.per_seconds, daily.burst, daily.by) == (
        100000,
        86400.0,
        100000,
        "key",
    )
    again = load_dir(tmp_path, CATALOGUE, UPSTREAMS).rate_limits["daily"]
    assert again.identity == daily.identity  # a reload keeps an unchanged limit's counters


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            LIMITS.replace("rate_limit: [per-key]", "rate_limit: [nope]"),
            10,
            "unknown rate limit 'nope'",
        ),
        (LIMITS.replace("limit: 20,", "limit: 0,"), 4, "limit must be positive"),
        (
            LIMITS.replace("per_seconds: 86400", "per_seconds: -1"),
            3,
            "per_seconds must be positive",
        ),
        (LIMITS.replace("burst: 200", "burst: 0"), 2, "burst must be positive"),
        (LIMITS.replace("by: ip", "by: country"), 4, "by must be one of key, user, ip"),
        (LIMITS.replace("[guessing]", "[per-key]"), 9, "only by: ip limits"),
    ],
)
def test_rate_limit_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    problems = _load(tmp_path, a=text)
    assert any(f"a.yaml:{line}: " in p and reason in p for p in problems), problems


def test_rate_limit_names_are_global_to_the_set(tmp_path: Path) -> None:
    other = "rate_limits:\n  daily: {limit: 5, per_seconds: 1, by: user}\nroutes: []\n"
    problems = _load(tmp_path, a=LIMITS, b=other)
    assert any("b.yaml:2: rate limit 'daily' is also defined at a.yaml:3" in p for p in problems)


def test_explain_shows_a_routes_limits(tmp_path: Path) -> None:
    from gateway.policy.explain import explain

    (tmp_path / "a.yaml").write_text(LIMITS)
    text, _ = explain(
        load_dir(tmp_path, CATALOGUE, UPSTREAMS), CATALOGUE, "GET", "/v1/search", None
    )
    assert "limit:    per-key: 100/1s by key, burst 200" in text
    assert "limit:    daily: 100000/86400s by key, burst 100000" in text


def test_a_bad_rate_limit_entry_is_named_at_its_line(tmp_path: Path) -> None:
    text = "rate_limits:\n  ok: {limit: 1, per_seconds: 1, by: ip}\n  x: {limit: 1}\nroutes: []\n"
    problems = _load(tmp_path, a=text)
    assert any("a.yaml:3: rate limit 'x'" in p and "per_seconds" in p for p in problems), problems
