"""Step 2: CORS for browser clients (Figma plugin UIs send `Origin: null`).

Preflights are answered here and never forwarded. Credentials travel in
headers, not cookies, so `Access-Control-Allow-Credentials` is never sent.
"""

from __future__ import annotations

from typing import Protocol

from multidict import CIMultiDictProxy

from gateway.foundation.config import Cors as CorsSettings
from gateway.foundation.problems import Problem
from gateway.http1.messages import Reply


class Head(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...


EXPOSE = "WWW-Authenticate, X-Request-Id"
VARY = {"Vary": "Origin"}


class Cors:
    def __init__(self, settings: CorsSettings) -> None:
        self.enabled = bool(settings.allow_origins)
        self._any = "*" in settings.allow_origins
        self._origins = frozenset(settings.allow_origins)
        self._allow_headers = ", ".join(settings.allow_headers)
        self._max_age = str(settings.max_age_seconds)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    def headers(self, request: Head) -> dict[str, str]:
        """What every non-preflight response to this request carries."""
        if not self.enabled:
            return {}
        origin = request.headers.get("Origin")
        if not self.allowed(origin):
            return dict(VARY)
        assert origin is not None
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": EXPOSE,
            **VARY,
        }

    def is_preflight(self, request: Head) -> bool:
        return (
            self.enabled
            and request.method == "OPTIONS"
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers
        )

    def preflight(self, request: Head, request_id: str) -> Reply:
        origin = request.headers["Origin"]
        if not self.allowed(origin):
            problem = Problem(403, "cors-origin-denied", "this origin is not allowed")
            return problem.reply(request_id, VARY)
        return Reply(
            204,
            {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": request.headers["Access-Control-Request-Method"],
                "Access-Control-Allow-Headers": self._allow_headers,
                "Access-Control-Max-Age": self._max_age,
                "X-Request-Id": request_id,
                **VARY,
            },
        )
