"""Route policies: every `policies/*.yaml` file, validated whole into one `PolicySet`.

A set with any error is refused whole; `PolicyError` lists each problem with its
file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.policy.ratelimits import BY_VALUES, RateLimit, policy_header
from gateway.policy.routing import ANY_METHOD, TAIL, Route, Router, conflicts
from gateway.policy.scopes import Catalogue

MAX_FILE_BYTES = 1024 * 1024
IDENTITY_MODES = ("headers", "jwt", "both")
# Aliases make a small file a huge document; bound what a walk may visit.
MAX_NODES = 100_000
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")


class PolicyError(Exception):
    """The policy set cannot be used; `problems` are "file:line: reason" lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MemberOf(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    organization: str | None = None
    project: str | None = None


class RouteSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    methods: list[str]
    path: str
    name: str | None = None
    scopes: list[str] = msgspec.field(default_factory=list)
    member_of: MemberOf | None = None
    public: bool = False
    upstream: str | None = None
    rate_limit: list[str] | None = None  # None: the file's default
    identity: str | None = None  # None: the file's default
    cost: int | None = None  # credits a request spends; None: the file's default


class RateLimitSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    limit: int
    per_seconds: float
    by: str
    burst: int | None = None  # defaults to `limit`


class PolicyFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    routes: list[RouteSpec]
    upstream: str | None = None
    rate_limits: dict[str, RateLimitSpec] = msgspec.field(default_factory=dict)
    rate_limit: list[str] = msgspec.field(default_factory=list)
    identity: str = "headers"  # headers | jwt | both: how upstreams learn who is calling
    cost: int = 1  # credits a request spends (§16), for routes that do not say


@dataclass(frozen=True, slots=True)
class PolicySet:
    router: Router
    version: str  # content hash: the same files give the same version
    files: tuple[str, ...]
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)


def load_dir(directory: Path, catalogue: Catalogue, upstreams: frozenset[str]) -> PolicySet:
    """Parse and validate every `*.yaml` in `directory` into one route table."""
    if not directory.is_dir():
        raise PolicyError([f"{directory}: not a directory"])
    files = sorted(directory.glob("*.yaml"))
    routes: list[Route] = []
    limits: dict[str, tuple[RateLimit, str]] = {}
    problems: list[str] = []
    digest = hashlib.sha256()
    for path in files:
        try:
            text = _read(path)
            digest.update(path.name.encode() + b"\0" + text.encode() + b"\0")
            loader = _FileLoader(path, text, catalogue, upstreams)
            routes += loader.routes()
            problems += _merge_limits(limits, loader.limits, path)
        except PolicyError as exc:
            problems += exc.problems
    problems += _cross_file_problems(routes, directory)
    routes, unknown = _with_limits(routes, {name: limit for name, (limit, _) in limits.items()})
    problems += [f"{directory / source}: {reason}" for source, reason in unknown]
    if problems:
        raise PolicyError(problems)
    return PolicySet(
        Router(routes),
        digest.hexdigest()[:12],
        tuple(p.name for p in files),
        {name: limit for name, (limit, _) in limits.items()},
    )


def _merge_limits(
    into: dict[str, tuple[RateLimit, str]], found: dict[str, tuple[RateLimit, str]], path: Path
) -> list[str]:
    """Names are global to the set: the same name in two files is an error."""
    problems = []
    for name, (limit, source) in found.items():
        if name in into:
            problems.append(
                f"{path.parent / source}: rate limit {name!r} is also defined at {into[name][1]}"
            )
        else:
            into[name] = (limit, source)
    return problems


def _with_limits(
    routes: list[Route], limits: dict[str, RateLimit]
) -> tuple[list[Route], list[tuple[str, str]]]:
    resolved, unknown = [], []
    for route in routes:
        missing = [name for name in route.rate_limit_names if name not in limits]
        unknown += [(route.source, f"unknown rate limit {name!r}") for name in missing]
        chosen = tuple(limits[n] for n in route.rate_limit_names if n in limits)
        if route.public and any(limit.by != "ip" for limit in chosen):
            unknown.append((route.source, "a public route has no key or user: only by: ip limits"))
        resolved.append(
            dataclasses.replace(
                route,
                rate_limits=chosen,
                address_limits=tuple(limit for limit in chosen if limit.by == "ip"),
                identity_limits=tuple(limit for limit in chosen if limit.by != "ip"),
                rate_limit_policy=policy_header(chosen),
            )
        )
    return resolved, unknown


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PolicyError([f"{path}: larger than {MAX_FILE_BYTES} bytes"])
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}: cannot read: {exc}"]) from None


def _cross_file_problems(routes: list[Route], directory: Path) -> list[str]:
    problems = [
        f"{directory / second.source}: route {second.name!r} is ambiguous with {first.name!r}"
        f" at {first.source} (same path shape, overlapping methods)"
        for first, second in conflicts(routes)
    ]
    seen: dict[str, Route] = {}
    for route in routes:
        if route.name in seen:
            problems.append(
                f"{directory / route.source}: duplicate route name {route.name!r}"
                f" (first at {seen[route.name].source})"
            )
        seen.setdefault(route.name, route)
    return problems


class _FileLoader:
    def __init__(self, path: Path, text: str, catalogue: Catalogue, upstreams: frozenset[str]):
        self.path = path
        self.text = text
        self.catalogue = catalogue
        self.upstreams = upstreams
        self.root: yaml.Node | None = None
        self.limits: dict[str, tuple[RateLimit, str]] = {}  # name -> (limit, "file:line")

    def fail(self, where: str | int, reason: str) -> PolicyError:
        line = where if isinstance(where, int) else self.line_of(where)
        return PolicyError([f"{self.path}:{line}: {reason}"])

    def routes(self) -> list[Route]:
        data = self._parse()
        try:
            spec = msgspec.convert(data, PolicyFile)
        except msgspec.ValidationError as exc:
            raise self._invalid(data, exc) from None
        out: list[Route] = []
        problems: list[str] = []
        for name, limit_spec in spec.rate_limits.items():
            try:
                self.limits[name] = self._limit(name, limit_spec)
            except PolicyError as exc:
                problems += exc.problems
        for index, route_spec in enumerate(spec.routes):
            try:
                route = self._route(index, route_spec, spec)
                if route_spec.identity is None:
                    out.append(self._with_identity("$", route, spec.identity))
                else:
                    at = f"$.routes[{index}]"
                    out.append(self._with_identity(at, route, route_spec.identity))
            except PolicyError as exc:
                problems += exc.problems
        if problems:
            raise PolicyError(problems)
        return out

    def _invalid(self, data: Any, exc: msgspec.ValidationError) -> PolicyError:
        """The error at its line; inside `rate_limits`, the entry named (msgspec says `[...]`)."""
        reason, _, where = str(exc).rpartition(" - at ")
        where = where.strip("`")
        if where.startswith("$.rate_limits[...]") and isinstance(data, dict):
            for name, value in (data.get("rate_limits") or {}).items():
                try:
                    msgspec.convert(value, RateLimitSpec)
                except msgspec.ValidationError as inner:
                    text, sep, rest = str(inner).rpartition(" - at ")
                    inside = rest.strip("`").removeprefix("$") if sep else ""
                    where = f"$.rate_limits.{name}{inside}"
                    reason = f"rate limit {name!r}: {text if sep else str(inner)}"
                    break
        field = re.match(r"Object (?:contains unknown|missing required) field `(.+)`", reason)
        if field:
            where += "." + field[1]
        return self.fail(where, reason or str(exc))

    def _parse(self) -> Any:
        try:
            # The reader checks the characters already in the constructor.
            loader = yaml.SafeLoader(self.text)
            try:
                self.root = loader.get_single_node()
                if self.root is None:
                    raise self.fail(1, "empty policy file")
                self._check_nodes(self.root)
                return loader.construct_document(self.root)
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise self.fail(line, f"invalid YAML: {problem}") from None

    def _check_nodes(self, root: yaml.Node) -> None:
        for count, node in enumerate(_walk(root)):
            if count > MAX_NODES:
                raise self.fail(1, f"document expands to more than {MAX_NODES} nodes (aliases?)")
            if isinstance(node, yaml.MappingNode):
                seen: set[object] = set()
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        continue  # a collection as a key: the constructor refuses it
                    if key_node.value in seen:
                        line = key_node.start_mark.line + 1
                        raise self.fail(line, f"duplicate key {key_node.value!r}")
                    seen.add(key_node.value)

    def line_of(self, where: str) -> int:
        """The line of a msgspec-style path such as `$.routes[1].scopes[0]`."""
        node = self.root
        for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where):
            child = _child(node, name, index)
            if child is None:
                break
            node = child
        return node.start_mark.line + 1 if node is not None else 1

    def _with_identity(self, at: str, route: Route, identity: str) -> Route:
        if identity not in IDENTITY_MODES:
            raise self.fail(
                f"{at}.identity", f"identity must be one of {', '.join(IDENTITY_MODES)}"
            )
        return dataclasses.replace(route, identity=identity)

    def _limit(self, name: str, spec: RateLimitSpec) -> tuple[RateLimit, str]:
        at = f"$.rate_limits.{name}"
        if not name or not name.isprintable() or '"' in name:
            raise self.fail(at, f"invalid rate limit name {name!r}")
        burst = spec.limit if spec.burst is None else spec.burst
        for key, value in (
            ("limit", spec.limit),
            ("per_seconds", spec.per_seconds),
            ("burst", burst),
        ):
            if not value > 0:
                raise self.fail(f"{at}.{key}", f"{key} must be positive")
        if spec.by not in BY_VALUES:
            raise self.fail(f"{at}.by", f"by must be one of {', '.join(BY_VALUES)}")
        limit = RateLimit(name, spec.limit, float(spec.per_seconds), burst, spec.by)
        return limit, f"{self.path.name}:{self.line_of(at)}"

    def _route(self, index: int, spec: RouteSpec, file: PolicyFile) -> Route:
        at = f"$.routes[{index}]"
        file_upstream, file_limits = file.upstream, file.rate_limit
        cost = file.cost if spec.cost is None else spec.cost
        if cost < 0:
            raise self.fail(f"{at}.cost" if spec.cost is not None else "$.cost",
                            "cost must be 0 (free) or more credits")  # fmt: skip
        shape, params = self._template(at, spec.path)
        methods = self._methods(at, spec.methods)
        member_of = self._member_of(at, spec, params)
        unknown = self.catalogue.unknown(spec.scopes)
        if unknown:
            raise self.fail(f"{at}.scopes", f"unknown scope {unknown[0]!r}")
        if spec.public and (spec.scopes or member_of):
            raise self.fail(at, "a public route cannot require scopes or membership")
        upstream = spec.upstream or file_upstream
        if upstream is None:
            raise self.fail(at, "no upstream: set `upstream` on the route or the file")
        if upstream not in self.upstreams:
            raise self.fail(f"{at}.upstream", f"unknown upstream {upstream!r}")
        line = self.line_of(at)
        return Route(
            name=spec.name or f"{self.path.stem}:{line}",
            methods=methods,
            template=spec.path,
            shape=shape,
            params=params,
            scopes=frozenset(spec.scopes),
            member_of=member_of,
            public=spec.public,
            upstream=upstream,
            source=f"{self.path.name}:{line}",
            rate_limit_names=tuple(file_limits if spec.rate_limit is None else spec.rate_limit),
            cost=cost,
        )

    def _template(self, at: str, path: str) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
        if not path.startswith("/"):
            raise self.fail(f"{at}.path", "path must start with /")
        parts = path[1:].split("/") if path != "/" else []
        shape: list[str | None] = []
        params: list[str] = []
        for i, part in enumerate(parts):
            param = _PARAM.fullmatch(part)
            if param is None:
                if not part or "{" in part or "}" in part or part in {".", ".."} or "%" in part:
                    raise self.fail(f"{at}.path", f"invalid path segment {part!r}")
                shape.append(part)
                continue
            if param[1] in params:
                raise self.fail(f"{at}.path", f"parameter {param[1]!r} appears twice")
            if param[2] and i != len(parts) - 1:
                raise self.fail(f"{at}.path", "{name...} must be the last segment")
            params.append(param[1])
            shape.append(TAIL if param[2] else None)
        return tuple(shape), tuple(params)

    def _methods(self, at: str, methods: list[str]) -> frozenset[str]:
        if not methods:
            raise self.fail(f"{at}.methods", "at least one method is required")
        for method in methods:
            if method != ANY_METHOD and not _METHOD.fullmatch(method):
                raise self.fail(f"{at}.methods", f"{method!r} is not an upper-case method")
        if ANY_METHOD in methods and len(methods) > 1:
            raise self.fail(f"{at}.methods", "`*` stands alone")
        return frozenset(methods)

    def _member_of(
        self, at: str, spec: RouteSpec, params: tuple[str, ...]
    ) -> tuple[tuple[str, str], ...]:
        if spec.member_of is None:
            return ()
        pairs = [
            (kind, param)
            for kind, param in (
                ("organization", spec.member_of.organization),
                ("project", spec.member_of.project),
            )
            if param is not None
        ]
        for kind, param in pairs:
            if param not in params:
                raise self.fail(
                    f"{at}.member_of.{kind}", f"member_of names {param!r}, not a path parameter"
                )
        return tuple(pairs)


def _walk(root: yaml.Node) -> Iterator[yaml.Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _child(node: yaml.Node | None, name: str, index: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and name:
        return next((v for k, v in node.value if getattr(k, "value", None) == name), None)
    if isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
        child: yaml.Node = node.value[int(index)]
        return child
    return None
