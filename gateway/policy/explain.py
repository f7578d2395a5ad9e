"""`gateway policy check` and `gateway policy explain`: the route table for people."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.policy.loader import PolicySet
from gateway.policy.paths import check_target
from gateway.policy.routing import Route
from gateway.policy.scopes import Catalogue


def _requires(route: Route) -> str:
    limits = [f"rate limit {limit.name}" for limit in route.rate_limits]
    if route.public:
        return "; ".join(["public (no credential)", *limits])
    parts = [f"scopes: {' '.join(sorted(route.scopes)) or '(any valid credential)'}"]
    parts += [f"member of {kind} {{{param}}}" for kind, param in route.member_of]
    cost = "free" if route.cost == 0 else f"{route.cost} credit{'s' if route.cost > 1 else ''}"
    return "; ".join([*parts, *limits, f"cost {cost}"])


def route_table(policies: PolicySet) -> str:
    lines = [f"policy version {policies.version}: {len(policies.router.routes)} routes"]
    for route in sorted(policies.router.routes, key=lambda r: (r.template, sorted(r.methods))):
        methods = ",".join(sorted(route.methods))
        lines.append(
            f"  {methods:<12} {route.template:<48} -> {route.upstream:<10}"
            f" {_requires(route)}  [{route.name} @ {route.source}]"
        )
    return "\n".join(lines)


def explain(
    policies: PolicySet,
    catalogue: Catalogue,
    method: str,
    path: str,
    scopes: Sequence[str] | None,
) -> tuple[str, bool]:
    """What decides `method path` — the request target as sent, query included — and
    whether `scopes` pass; (text, allowed). Judged as the gateway judges a request:
    a target it refuses is refused here too (raises its `Problem`)."""
    segments = check_target(method, path).segments
    router = policies.router
    match = router.match(method, segments)
    candidates = router.candidates(segments)
    if match is None:
        beaten = [f"  {','.join(sorted(r.methods))} {r.template} ({r.name})" for r in candidates]
        text = f"{method} {path}: no route matches (404, default deny)"
        if beaten:
            text += "\nroutes for this path, none allowing the method:\n" + "\n".join(beaten)
        return text, False
    route = match.route
    lines = [
        f"{method} {path}",
        f"  route:    {route.name} ({route.source})",
        f"  template: {route.template}  methods: {','.join(sorted(route.methods))}",
        f"  params:   {match.params or '{}'}",
        f"  upstream: {route.upstream} (identity: {route.identity})",
        f"  requires: {_requires(route)}",
    ]
    lines += [f"  limit:    {limit.describe()}" for limit in route.rate_limits]
    others = [r for r in candidates if r is not route]
    if others:
        lines.append("  beat (less specific or other method):")
        lines += [f"    {','.join(sorted(r.methods))} {r.template} ({r.name})" for r in others]
    if route.public:
        lines.append("  verdict:  ALLOW (public: no credential needed)")
        return "\n".join(lines), True
    if scopes is None:
        needed = " ".join(sorted(route.scopes)) or "(any valid credential)"
        lines.append(f"  verdict:  401 without a credential; with one it needs {needed}"
                     " (give --scopes to check a key's)")  # fmt: skip
        return "\n".join(lines), True
    effective = catalogue.closure(scopes)
    missing = sorted(route.scopes - effective)
    verdict = "ALLOW (scopes)" if not missing else f"DENY: missing {' '.join(missing)}"
    if not missing and route.member_of:
        verdict += "; membership is checked per user at request time"
    lines.append(f"  verdict:  {verdict}")
    return "\n".join(lines), not missing
