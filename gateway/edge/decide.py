"""The stages every request passes whichever door it came in by — the proxy listener
or a decision endpoint: match → authenticate → authorize (the target already safe).

One copy of the checks: `Pipeline` forwards after `decide()`, the decision
endpoints answer after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from gateway.credits.ledger import CreditLedger
from gateway.edge.authn import Authenticator
from gateway.edge.charge import charge
from gateway.edge.safety import Target
from gateway.foundation.problems import Problem, database_unavailable
from gateway.foundation.soon import Later, Soon
from gateway.keys.organizations import OrganizationPolicies
from gateway.keys.principal import Principal
from gateway.keys.store import KeyStore, StoreUnavailable
from gateway.policy.authz import authorize
from gateway.policy.reloader import ActivePolicies
from gateway.policy.routing import Match, Route
from gateway.ratelimit.limiter import LimitState, RateLimiter
from gateway.tracing.spans import RequestTrace

_NO_MEMBERSHIPS: frozenset[tuple[str, str]] = frozenset()


@dataclass(slots=True, init=False)  # one per request: see `http1.framing.Data`
class Outcome:
    """What the access log and metrics say about one request; filled in as it goes."""

    endpoint: str  # "proxy" or the decision endpoint that was asked
    route: str
    reason: str | None
    principal: Principal | None
    user_id: str | None  # signed in to the API keys page (no key involved)
    upstream: str | None
    limits: LimitState | None  # only on a route with rate limits
    asked: tuple[str, str] | None  # the method and target a front proxy asked about
    client: str  # the client address
    credits_left: int | None  # after this request, for a key with credits
    credits_spent: int
    refused_key: str | None  # a known key refused with 401 (for its usage counts)
    template: str | None  # the matched route's path template (`http.route`)
    trace: RequestTrace | None  # when tracing is on

    def __init__(self, endpoint: str = "proxy", client: str = "") -> None:
        self.endpoint, self.client = endpoint, client
        self.route = "-"
        self.reason = self.user_id = self.upstream = self.refused_key = self.template = None
        self.principal, self.limits, self.asked, self.trace = None, None, None, None
        self.credits_left, self.credits_spent = None, 0

    def limit_headers(self) -> dict[str, str]:
        """RateLimit-* and X-Credits-Remaining, for answers allowed and refused alike."""
        headers = self.limits.headers if self.limits is not None else {}
        if self.credits_left is None:
            return headers
        return {**headers, "X-Credits-Remaining": str(self.credits_left)}


def check_address(principal: Principal, client: str) -> None:
    """A key pinned to networks (`allowed_cidrs`) is refused from any other address."""
    if principal.networks and not principal.allows_address(client):
        raise Problem(403, "address-not-allowed", "this key may not be used from this address")


@dataclass(slots=True, init=False)  # one per request: see `http1.framing.Data`
class Decision:
    """An allowed request: its route and, unless the route is public, who it is."""

    route: Route
    principal: Principal | None

    def __init__(self, route: Route, principal: Principal | None) -> None:
        self.route, self.principal = route, principal


class Decider:
    def __init__(
        self,
        policies: ActivePolicies,
        authenticator: Authenticator,
        store: KeyStore,
        limiter: RateLimiter,
        ledger: CreditLedger,
        organizations: OrganizationPolicies,
        pools: CreditLedger,
    ) -> None:
        """`ledger` spends keys' own balances; `pools`, users' pools (§21)."""
        self._policies = policies
        self._organizations = organizations
        self._authn = authenticator
        self._store = store
        self._limiter = limiter
        self._ledger = ledger
        self._pools = pools

    async def decide(
        self,
        method: str,
        target: Target,
        headers: CIMultiDictProxy[str],
        client: str,
        outcome: Outcome,
    ) -> Decision:
        """Allow (a `Decision`) or raise the `Problem` the request is refused with.

        The checks run in the order of §16, each refusal spending nothing later in the
        list: `by: ip` limits (before authentication), the credential (401), the client
        address (403), scopes and membership (403), the other rate limits (429), credits
        (429)."""
        outcome.client = client
        match = self._policies.current.router.match(method, target.segments)
        if match is None:
            raise Problem(404, "no-route", "no route allows this method and path")
        route = match.route
        outcome.route = route.name
        outcome.template = route.template
        limits = LimitState(route.rate_limit_policy) if route.rate_limits else None
        if limits is not None:
            outcome.limits = limits
            waits = self._limiter.before_authentication(route, client, limits)
            if isinstance(waits, Later):
                await waits
        if route.public:
            return Decision(route, None)
        found = self._authn.authenticate(headers, client)
        principal = await found if isinstance(found, Later) else found
        outcome.principal = principal
        check_address(principal, client)
        if route.member_of:
            waits = self._authorize_member(principal, match)
            if isinstance(waits, Later):
                await waits
        else:
            authorize(principal.scopes, match, _NO_MEMBERSHIPS)
        if limits is not None:
            waits = self._limiter.after_authorization(route, principal, limits)
            if isinstance(waits, Later):
                await waits
        if principal.credits is not None:
            account = principal.credits
            ledger = self._pools if account.pooled else self._ledger
            left = charge(ledger, account, route.cost)
            outcome.credits_left = await left if isinstance(left, Later) else left
            if outcome.credits_left is not None:
                outcome.credits_spent = route.cost
        return Decision(route, principal)

    def _authorize_member(self, principal: Principal, match: Match) -> Soon[None]:
        """Scopes, membership and the organizations' key policies; a `Later` only when
        the user's memberships are not cached."""
        if not match.route.scopes <= principal.scopes:
            self._check_member(principal, match, _NO_MEMBERSHIPS)  # refused: scopes first
            return None
        found = self._store.memberships(principal.user_id)
        if isinstance(found, Later):
            return Later(self._member_after_lookup(principal, match, found))
        self._check_member(principal, match, found)
        return None

    async def _member_after_lookup(
        self, principal: Principal, match: Match, found: Later[frozenset[tuple[str, str]]]
    ) -> None:
        try:
            memberships = await found
        except StoreUnavailable:
            raise database_unavailable() from None
        self._check_member(principal, match, memberships)

    def _check_member(
        self, principal: Principal, match: Match, memberships: frozenset[tuple[str, str]]
    ) -> None:
        authorize(principal.scopes, match, memberships)
        for kind, param in match.route.member_of:
            if kind == "organization":
                self._organizations.check(match.params[param], principal.lifetime)
