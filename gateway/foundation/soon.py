"""A value at once, or — only when it must wait on PostgreSQL or Redis — later.

The request path's checks (the authenticator, the rate limiter, the credit charge)
answer a cached key without a coroutine: creating and awaiting one per check cost
more than the check itself. Each returns `Soon[T]`: the value, or a `Later` to await
for it. The caller settles it in one line:

    principal = await found if isinstance(found, Later) else found
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, Generic, TypeAlias, TypeVar

T = TypeVar("T")


class Later(Generic[T]):
    """What a check answers when it must wait: awaiting it gives the value."""

    __slots__ = ("_pending",)

    def __init__(self, pending: Awaitable[T]) -> None:
        self._pending = pending

    def __await__(self) -> Generator[Any, None, T]:
        return self._pending.__await__()


Soon: TypeAlias = "T | Later[T]"
