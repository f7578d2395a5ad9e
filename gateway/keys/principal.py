"""Who a request speaks for once authenticated: a user, through a key (or its actor token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AuthKind = Literal["api_key", "actor_token"]


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    key_id: str
    scopes: frozenset[str]  # effective scopes
    auth: AuthKind
    scope_header: str  # X-Gateway-Scopes, built once per credential
