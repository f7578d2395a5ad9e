"""Import direction: a capability imports only what lies below it (each package's docstring).

The check parses the real modules under `gateway/` (imports inside functions
included) and fails on any import the table below does not allow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
FOUNDATION = frozenset({"foundation", "http1", "tls", "tracing"})
BELOW_EDGE = FOUNDATION | {
    "observability",
    "policy",
    "audit",
    "keys",
    "credits",
    "usage",
    "webhooks",
    "leaks",
    "tokens",
    "forward",
    "selfservice",
    "ratelimit",
}
# What each unit (a top-level module or a capability package) may import.
ALLOWED: dict[str, frozenset[str]] = {
    "http1": frozenset(),
    "foundation": frozenset({"http1"}),
    "tls": frozenset({"foundation"}),
    "tracing": frozenset({"foundation"}),
    "testing": frozenset(),
    "observability": FOUNDATION,
    "policy": FOUNDATION | {"observability"},
    "audit": FOUNDATION,
    "credits": FOUNDATION | {"audit"},
    "usage": FOUNDATION,
    "webhooks": FOUNDATION | {"observability", "audit", "credits"},
    "leaks": FOUNDATION | {"observability", "policy", "audit", "credits", "usage", "keys"},
    "keys": FOUNDATION | {"observability", "policy", "audit", "credits", "usage"},
    "tokens": FOUNDATION | {"observability", "policy", "keys"},
    "forward": FOUNDATION | {"observability", "policy", "keys"},
    "selfservice": FOUNDATION | {"observability", "policy", "audit", "credits", "keys", "usage"},
    "ratelimit": FOUNDATION | {"observability", "policy", "keys"},
    "edge": BELOW_EDGE,
    "appkeys": FOUNDATION | {"observability", "policy"},
    "admin": BELOW_EDGE | {"appkeys"},
    "decisions": BELOW_EDGE | {"edge"},
    # The composition root builds on `resources` and `app`; neither looks back at it.
    "app": BELOW_EDGE | {"admin", "appkeys", "resources"},
    "resources": BELOW_EDGE,
    "runtime": BELOW_EDGE | {"edge", "decisions", "admin", "app", "resources"},
    "serve": BELOW_EDGE | {"runtime", "resources"},
    "demo": BELOW_EDGE | {"runtime", "resources"},
    "cli": BELOW_EDGE | {"serve", "demo"},
    "reference": BELOW_EDGE | {"cli", "admin"},
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}


def unit_of(module: str) -> str:
    """`gateway.keys.store` → `keys`; `gateway.cli` → `cli`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_units(source: str) -> Iterator[tuple[int, str]]:
    """(line, unit) of every `gateway` import in a module's source."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "gateway":
                for alias in node.names:
                    yield node.lineno, alias.name
            elif node.module.startswith("gateway."):
                yield node.lineno, unit_of(node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gateway."):
                    yield node.lineno, unit_of(alias.name)


def violations(unit: str, source: str, where: str) -> list[str]:
    allowed = ALLOWED[unit] | {unit}
    return [
        f"{where}:{line}: {unit} imports {target}"
        for line, target in imported_units(source)
        if target not in allowed
    ]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        unit = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else path.stem
        found.append((unit, path))
    return found


def test_every_unit_is_declared() -> None:
    undeclared = {unit for unit, _ in modules()} - set(ALLOWED)
    assert not undeclared, f"add these to ALLOWED with what they may import: {undeclared}"


def test_no_module_imports_a_higher_capability() -> None:
    problems = [
        problem
        for unit, path in modules()
        for problem in violations(unit, path.read_text(encoding="utf-8"), str(path))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("unit", "source"),
    [
        ("policy", "from gateway.edge import safety\n"),
        ("keys", "def f():\n    from gateway.admin.api import add_routes\n"),
        ("keys", "from gateway import forward\n"),
        ("tokens", "import gateway.edge.pipeline\n"),
        ("observability", "from gateway.policy.scopes import Catalogue\n"),
    ],
)
def test_the_check_catches_a_forbidden_import(unit: str, source: str) -> None:
    assert violations(unit, source, "probe.py")


def test_the_top_of_the_package_holds_only_entry_points_and_the_composition_root() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "cli", "serve", "demo", "testing", "reference",
                   "runtime", "resources", "app", "appkeys"}, top  # fmt: skip


def test_the_policy_and_keys_packages_stay_below_edge_admin_and_forward() -> None:
    for unit in ("policy", "keys"):
        assert not ALLOWED[unit] & {"edge", "admin", "forward"}
