"""The compiled route table: most-specific-wins matching over path segments.

Routes live in a segment trie, so a match costs one dict lookup per segment
whatever the number of routes. Specificity, compared segment by segment from
the left: literal beats `{name}` beats `{name...}`; only between equally
specific paths does a route naming the method beat `*`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.http1.wire import Memo
from gateway.policy.ratelimits import RateLimit

ANY_METHOD = "*"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    methods: frozenset[str]  # {"*"} means any method
    template: str
    shape: tuple[str | None, ...]  # literal text, None for `{name}`, "..." for a tail
    params: tuple[str, ...]  # parameter names in path order
    scopes: frozenset[str]
    member_of: tuple[tuple[str, str], ...]  # (resource type, parameter name)
    public: bool
    upstream: str
    source: str  # "file:line", for errors and `policy explain`
    rate_limit_names: tuple[str, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()  # resolved from the names by the loader
    # Derived from `rate_limits` once at load, not per request:
    address_limits: tuple[RateLimit, ...] = ()  # by: ip, before authentication
    identity_limits: tuple[RateLimit, ...] = ()  # by: key or user, after authorization
    rate_limit_policy: str = ""  # the RateLimit-Policy header
    identity: str = "headers"  # headers | jwt | both (X-Gateway-Identity, §15)
    cost: int = 1  # credits a request spends from a key that has credits (§16)

    def allows(self, method: str) -> bool:
        return method in self.methods or ANY_METHOD in self.methods


@dataclass(slots=True, init=False)  # (see `http1.framing.Data`)
class Match:
    """A route and the path's parameters: remembered by the router and shared by every
    request with the same method and path, so never changed."""

    route: Route
    params: dict[str, str]

    def __init__(self, route: Route, params: dict[str, str]) -> None:
        self.route, self.params = route, params


TAIL = "..."


@dataclass(slots=True)
class _Leaf:
    by_method: dict[str, Route] = field(default_factory=dict)
    any_method: Route | None = None

    def pick(self, method: str) -> Route | None:
        return self.by_method.get(method) or self.any_method

    def add(self, route: Route) -> None:
        if ANY_METHOD in route.methods:
            self.any_method = route
        for method in route.methods - {ANY_METHOD}:
            self.by_method[method] = route

    def routes(self) -> list[Route]:
        found = list(dict.fromkeys(self.by_method.values()))
        return found + ([self.any_method] if self.any_method else [])


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    tail: _Leaf | None = None
    here: _Leaf | None = None


class Router:
    """Matches (method, decoded path segments) to the most specific route."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._root = _Node()
        self.routes: tuple[Route, ...] = tuple(routes)
        for route in self.routes:
            self._insert(route)
        # By method and path: the same few recur, and a walk cost 4 % of a decision's
        # instructions. A new policy is a new router, with nothing remembered.
        self._matched: Memo[tuple[str, tuple[str, ...]], Match | None] = Memo(self._walked, 4096)

    def _insert(self, route: Route) -> None:
        node = self._root
        for part in route.shape:
            if part == TAIL:
                node.tail = node.tail or _Leaf()
                node.tail.add(route)
                return
            if part is None:
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.literals.setdefault(part, _Node())
        node.here = node.here or _Leaf()
        node.here.add(route)

    def match(self, method: str, segments: Sequence[str]) -> Match | None:
        path = segments if isinstance(segments, tuple) else tuple(segments)
        return self._matched.get((method, path))

    def _walked(self, asked: tuple[str, tuple[str, ...]]) -> Match | None:
        method, segments = asked
        values: list[str] = []
        route = self._walk(self._root, segments, 0, method, values)
        if route is None:
            return None
        return Match(route, dict(zip(route.params, values, strict=True)))

    def _walk(
        self, node: _Node, segments: Sequence[str], i: int, method: str, values: list[str]
    ) -> Route | None:
        if i == len(segments):
            return node.here.pick(method) if node.here else None
        child = node.literals.get(segments[i])
        if child is not None:
            route = self._walk(child, segments, i + 1, method, values)
            if route is not None:
                return route
        if node.param is not None:
            values.append(segments[i])
            route = self._walk(node.param, segments, i + 1, method, values)
            if route is not None:
                return route
            values.pop()
        if node.tail is not None:
            route = node.tail.pick(method)
            if route is not None:
                values.append("/".join(segments[i:]))
                return route
        return None

    def candidates(self, segments: Sequence[str]) -> list[Route]:
        """Every route whose path matches, most specific first (for `policy explain`)."""
        found: list[Route] = []
        self._collect(self._root, segments, 0, found)
        return found

    def _collect(self, node: _Node, segments: Sequence[str], i: int, found: list[Route]) -> None:
        if i == len(segments):
            found.extend(node.here.routes() if node.here else [])
            return
        child = node.literals.get(segments[i])
        if child is not None:
            self._collect(child, segments, i + 1, found)
        if node.param is not None:
            self._collect(node.param, segments, i + 1, found)
        if node.tail is not None:
            found.extend(node.tail.routes())


def conflicts(routes: Sequence[Route]) -> list[tuple[Route, Route]]:
    """Pairs that could match the same method and path with equal specificity."""
    by_shape: dict[tuple[str | None, ...], list[Route]] = {}
    for route in routes:
        by_shape.setdefault(route.shape, []).append(route)
    pairs = []
    for group in by_shape.values():
        for i, first in enumerate(group):
            pairs += [
                (first, second) for second in group[i + 1 :] if first.methods & second.methods
            ]
    return pairs
