"""The stages every request passes whichever door it came in by — the proxy listener
or a decision endpoint: match → authenticate → authorize (the target already safe).

One copy of the checks: `Pipeline` forwards after `decide()`, the decision
endpoints answer after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.credits.ledger import CreditLedger
from gateway.edge.authn import Authenticator
from gateway.edge.charge import charge
from gateway.edge.safety import Target
from gateway.foundation.problems import Problem, database_unavailable
from gateway.foundation.soon import Later, Soon
from gateway.http1.fields import Fields
from gateway.http1.wire import encode_headers
from gateway.keys.organizations import OrganizationPolicies
from gateway.keys.principal import Principal
from gateway.keys.store import KeyStore, StoreUnavailable
from gateway.policy.authz import authorize, check_memberships
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

    def limit_lines(self) -> bytes:
        """`limit_headers` as header lines, encoded."""
        lines = encode_headers(self.limits.headers) if self.limits is not None else b""
        if self.credits_left is None:
            return lines
        return lines + b"X-Credits-Remaining: " + str(self.credits_left).encode() + b"\r\n"


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

    def decide(
        self,
        method: str,
        target: Target,
        fields: Fields,
        client: str,
        outcome: Outcome,
    ) -> Soon[Decision]:
        """Allow (a `Decision`) or raise the `Problem` the request is refused with; a
        `Later` when a check must wait (an uncached key or membership, a limit kept in
        Redis, a credit share to fetch), the decision at once when none must.

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
        if route.rate_limits:
            return Later(self._decide_limited(match, fields, client, outcome))
        if route.public:
            return Decision(route, None)
        found = self._authn.authenticate(fields, client)
        if isinstance(found, Later):
            return Later(self._decide_after(found, match, client, outcome))
        checked = self._authorize(found, match, client, outcome)
        if isinstance(checked, Later):
            return Later(self._decide_after(found, match, client, outcome, checked))
        return self._charge(found, route, outcome)

    async def _decide_after(
        self,
        found: Soon[Principal],
        match: Match,
        client: str,
        outcome: Outcome,
        checked: Later[None] | None = None,
    ) -> Decision:
        """The rest of a decision on a route without rate limits, from the check that
        had to wait (`checked` when authorization did, else authentication)."""
        principal = await found if isinstance(found, Later) else found
        if checked is None:
            checked = self._authorize(principal, match, client, outcome)
        if checked is not None:
            await checked
        charged = self._charge(principal, match.route, outcome)
        return await charged if isinstance(charged, Later) else charged

    async def _decide_limited(
        self, match: Match, fields: Fields, client: str, outcome: Outcome
    ) -> Decision:
        """A decision on a route with rate limits: its limiter may wait on Redis."""
        route = match.route
        limits = LimitState(route.rate_limit_policy)
        outcome.limits = limits
        waits = self._limiter.before_authentication(route, client, limits)
        if isinstance(waits, Later):
            await waits
        if route.public:
            return Decision(route, None)
        found = self._authn.authenticate(fields, client)
        principal = await found if isinstance(found, Later) else found
        checked = self._authorize(principal, match, client, outcome)
        if checked is not None:
            await checked
        waits = self._limiter.after_authorization(route, principal, limits)
        if isinstance(waits, Later):
            await waits
        charged = self._charge(principal, route, outcome)
        return await charged if isinstance(charged, Later) else charged

    def _authorize(
        self, principal: Principal, match: Match, client: str, outcome: Outcome
    ) -> Later[None] | None:
        """The client address, scopes and membership; a `Later` only when the user's
        memberships are not cached."""
        outcome.principal = principal
        check_address(principal, client)
        if match.route.member_of:
            return self._authorize_member(principal, match)
        authorize(principal.scopes, match, _NO_MEMBERSHIPS)
        return None

    def _charge(self, principal: Principal, route: Route, outcome: Outcome) -> Soon[Decision]:
        """The last check: a key with credits pays the route's cost."""
        account = principal.credits
        if account is None:
            return Decision(route, principal)
        ledger = self._pools if account.pooled else self._ledger
        left = charge(ledger, account, route.cost)
        if isinstance(left, Later):
            return Later(self._charged_after(left, principal, route, outcome))
        return self._charged(left, principal, route, outcome)

    async def _charged_after(
        self, left: Later[int | None], principal: Principal, route: Route, outcome: Outcome
    ) -> Decision:
        return self._charged(await left, principal, route, outcome)

    def _charged(
        self, left: int | None, principal: Principal, route: Route, outcome: Outcome
    ) -> Decision:
        outcome.credits_left = left
        if left is not None:
            outcome.credits_spent = route.cost
        return Decision(route, principal)

    def _authorize_member(self, principal: Principal, match: Match) -> Later[None] | None:
        """Scopes, membership and the organizations' key policies; a `Later` only when
        the user's memberships are not cached."""
        if not match.route.scopes <= principal.scopes:
            authorize(principal.scopes, match, _NO_MEMBERSHIPS)  # refused: scopes first
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
        """Membership, then the organizations' key policies (the scopes were checked)."""
        check_memberships(match, memberships)
        for kind, param in match.route.member_of:
            if kind == "organization":
                self._organizations.check(match.params[param], principal.lifetime)
