"""Authorization: a principal against a matched route. Pure; raises a 403 `Problem`."""

from __future__ import annotations

from collections.abc import Set

from gateway.foundation.problems import Problem, insufficient_scope
from gateway.policy.routing import Match


def authorize(scopes: frozenset[str], match: Match, memberships: Set[tuple[str, str]]) -> None:
    """Every required scope held (`scopes` are effective, after `implies`) and every
    `member_of` satisfied."""
    route = match.route
    if not route.scopes <= scopes:
        raise insufficient_scope(sorted(route.scopes - scopes))
    check_memberships(match, memberships)


def check_memberships(match: Match, memberships: Set[tuple[str, str]]) -> None:
    """Every `member_of` of the matched route satisfied."""
    params = match.params
    for kind, param in match.route.member_of:
        if (kind, params[param]) not in memberships:
            raise Problem(403, "not-a-member", f"not a member of this {kind}")
