"""The scope catalogue and its `implies` closure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class Catalogue:
    """Known scopes; `closure()` follows `implies` transitively."""

    def __init__(self, implies: Mapping[str, Sequence[str]]) -> None:
        self._closures = {name: self._walk(name, implies) for name in implies}

    @staticmethod
    def _walk(start: str, implies: Mapping[str, Sequence[str]]) -> frozenset[str]:
        seen = {start}
        todo = [start]
        while todo:
            for implied in implies.get(todo.pop(), ()):
                if implied not in seen:
                    seen.add(implied)
                    todo.append(implied)
        return frozenset(seen)

    def __contains__(self, scope: object) -> bool:
        return scope in self._closures

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._closures)

    def closure(self, scopes: Iterable[str]) -> frozenset[str]:
        """Effective scopes; unknown names (removed from the catalogue since) grant nothing."""
        out: set[str] = set()
        for scope in scopes:
            out |= self._closures.get(scope, frozenset())
        return frozenset(out)

    def unknown(self, scopes: Iterable[str]) -> list[str]:
        return [scope for scope in scopes if scope not in self._closures]
