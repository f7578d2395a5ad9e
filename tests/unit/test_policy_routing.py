from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.routing import TAIL, Route, Router


def route(template: str, methods: str = "GET", name: str | None = None) -> Route:
    parts = [p for p in template.strip("/").split("/") if p]
    shape: list[str | None] = []
    params: list[str] = []
    for i, part in enumerate(parts):
        if part.startswith("{") and part.endswith("...}"):
            shape.append(TAIL)
            params.append(f"p{i}")
        elif part.startswith("{"):
            shape.append(None)
            params.append(f"p{i}")
        else:
            shape.append(part)
    return Route(
        name=name or f"{methods} {template}",
        methods=frozenset(methods.split(",")),
        template=template,
        shape=tuple(shape),
        params=tuple(params),
        scopes=frozenset(),
        member_of=(),
        public=False,
        upstream="core",
        source="test:1",
    )


def test_literal_beats_param_beats_tail() -> None:
    router = Router([route("/a/{x...}"), route("/a/{x}"), route("/a/b")])
    assert router.match("GET", ["a", "b"]).route.template == "/a/b"  # type: ignore[union-attr]
    assert router.match("GET", ["a", "c"]).route.template == "/a/{x}"  # type: ignore[union-attr]
    found = router.match("GET", ["a", "c", "d"])
    assert found is not None and found.route.template == "/a/{x...}"
    assert found.params == {"p1": "c/d"}


def test_method_match_backtracks_to_less_specific_paths() -> None:
    router = Router([route("/a/b", "GET"), route("/a/{x}", "POST")])
    found = router.match("POST", ["a", "b"])
    assert found is not None and found.route.template == "/a/{x}"
    assert router.match("DELETE", ["a", "b"]) is None


def test_named_method_beats_star_only_on_equal_paths() -> None:
    router = Router([route("/a/{x}", "*"), route("/a/{x}", "GET"), route("/{y}/b", "POST")])
    assert router.match("GET", ["a", "b"]).route.methods == {"GET"}  # type: ignore[union-attr]
    # The literal first segment is more specific than a method name match further right.
    assert router.match("POST", ["a", "b"]).route.methods == {"*"}  # type: ignore[union-attr]


def test_tail_needs_at_least_one_segment() -> None:
    router = Router([route("/a/{x...}")])
    assert router.match("GET", ["a"]) is None


def _specificity(r: Route, length: int) -> tuple[int, ...]:
    ranks = [0 if p is not None and p != TAIL else 1 if p is None else 2 for p in r.shape]
    return tuple(ranks + [2] * (length - len(ranks)))


def _matches(r: Route, method: str, segments: list[str]) -> bool:
    if not r.allows(method):
        return False
    shape = list(r.shape)
    if shape and shape[-1] == TAIL:
        if len(segments) < len(shape):
            return False
        shape = shape[:-1]
        segments = segments[: len(shape)]
    elif len(segments) != len(shape):
        return False
    return all(p is None or p == s for p, s in zip(shape, segments, strict=True))


segment = st.sampled_from(["a", "b", "c"])
part = st.one_of(segment, st.just("{x}"))


@st.composite
def templates(draw: st.DrawFn) -> str:
    parts = draw(st.lists(part, min_size=0, max_size=3))
    if draw(st.booleans()):
        parts.append("{rest...}")
    return "/" + "/".join(parts)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(templates(), st.sampled_from(["GET", "POST", "*"])), max_size=12),
    st.lists(segment, max_size=4),
    st.sampled_from(["GET", "POST"]),
)
def test_match_returns_the_most_specific_matching_route(
    specs: list[tuple[str, str]], segments: list[str], method: str
) -> None:
    routes: list[Route] = []
    seen: set[tuple[tuple[str | None, ...], str]] = set()
    for template, methods in specs:
        candidate = route(template, methods)
        if (candidate.shape, methods) in seen:
            continue
        seen.add((candidate.shape, methods))
        routes.append(candidate)
    found = Router(routes).match(method, segments)
    matching = [r for r in routes if _matches(r, method, segments)]
    if not matching:
        assert found is None
        return
    assert found is not None
    best = min(
        matching,
        key=lambda r: (_specificity(r, len(segments) + 1), "*" in r.methods),
    )
    assert _specificity(found.route, len(segments) + 1) == _specificity(best, len(segments) + 1)
    assert ("*" in found.route.methods) == ("*" in best.methods)
