from __future__ import annotations

from gateway.foundation.config import Config
from gateway.policy.scopes import Catalogue


def _catalogue() -> Catalogue:
    return Catalogue({name: d.implies for name, d in Config().scopes.items()})


def test_implies_is_transitive() -> None:
    effective = _catalogue().closure(["organizations:admin"])
    assert {"organizations:write", "organizations:read", "organizations:user:read"} <= effective
    assert _catalogue().closure(["projects:admin"]) == {
        "projects:admin",
        "projects:write",
        "projects:read",
    }


def test_unknown_scopes_grant_nothing_and_cycles_terminate() -> None:
    assert _catalogue().closure(["nope"]) == frozenset()
    cyclic = Catalogue({"a": ["b"], "b": ["a"]})
    assert cyclic.closure(["a"]) == {"a", "b"}
