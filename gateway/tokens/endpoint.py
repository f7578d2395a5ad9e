"""`POST /auth/actor-tokens` and `GET /.well-known/jwks.json` on the proxy listener."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.foundation.config import Tokens
from gateway.foundation.jsonbody import MAX_BODY, parse_object
from gateway.foundation.problems import Problem, invalid_fields
from gateway.http1.messages import OwnedRequest, Reply
from gateway.keys.principal import Principal
from gateway.keys.validation import whole_number
from gateway.tokens.actor import Signer

MINT_SCOPE = "actor_tokens:create"
_encode = msgspec.json.Encoder().encode


class TokenEndpoint:
    def __init__(self, signer: Signer, settings: Tokens) -> None:
        self._signer = signer
        self._settings = settings
        self.jwks_body = _encode(signer.jwks)

    def jwks(self) -> Reply:
        return Reply.of(
            200, self.jwks_body, "application/json", {"Cache-Control": "public, max-age=300"}
        )

    async def mint(self, request: OwnedRequest, principal: Principal) -> Reply:
        if principal.auth != "api_key":
            raise Problem(403, "actor-cannot-mint", "an actor token cannot mint actor tokens")
        if MINT_SCOPE not in principal.scopes:
            raise Problem(403, "insufficient-scope", f"the key lacks the scope {MINT_SCOPE}")
        body = parse_object(await request.read_body(MAX_BODY), empty_is_object=True)
        scopes, ttl = self._validate(body, principal)
        token = self._signer.mint(principal.user_id, principal.key_id, scopes, ttl)
        payload = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": " ".join(sorted(scopes)),
        }
        return Reply.of(201, _encode(payload), "application/json", {"Cache-Control": "no-store"})

    def _validate(self, body: dict[str, Any], principal: Principal) -> tuple[list[str], int]:
        errors: list[tuple[str, str]] = []
        unknown = sorted(set(body) - {"scopes", "ttl_seconds"})
        errors += [(name, "unknown field") for name in unknown]
        ttl = whole_number(body.get("ttl_seconds", self._settings.default_ttl_seconds))
        if ttl is None or ttl <= 0:
            errors.append(("ttl_seconds", "must be a positive integer"))
        elif ttl > self._settings.max_ttl_seconds:
            errors.append(("ttl_seconds", f"must be at most {self._settings.max_ttl_seconds}"))
        default = sorted(principal.scopes - {MINT_SCOPE})
        scopes = body.get("scopes", default)
        if not isinstance(scopes, list):
            errors.append(("scopes", "must be a list of scopes"))
        else:
            errors += [
                (f"scopes[{i}]", "must be a string")
                for i, s in enumerate(scopes)
                if not isinstance(s, str)
            ]
        if errors:
            raise invalid_fields(errors)
        assert isinstance(scopes, list) and isinstance(ttl, int)
        missing = sorted(set(scopes) - (principal.scopes - {MINT_SCOPE}))
        if missing:
            raise Problem(
                403,
                "scope-not-held",
                "cannot grant scopes the key does not hold: " + " ".join(missing),
                extra={"missing_scopes": missing},
            )
        return sorted(set(scopes)), ttl
