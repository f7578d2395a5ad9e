"""The reference for the decision rows: the bare auth_request pattern, an aiohttp
service that looks the key's SHA-256 up in a dict and answers 200 with the identity
headers or 401. No policy, no scopes, no expiry, no revocation, no access log: what
a decision costs at the least on this stack."""

from __future__ import annotations

import hashlib
import sys

from aiohttp import web


def main() -> None:
    port, keys = int(sys.argv[1]), sys.argv[2].split(",")
    import uvloop

    uvloop.install()
    known = {hashlib.sha256(key.encode()).digest(): ("bench-user", key[:12]) for key in keys}

    async def decide(request: web.Request) -> web.Response:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        found = known.get(hashlib.sha256(credential.encode()).digest())
        if scheme.lower() != "bearer" or found is None:
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        user, key_id = found
        return web.Response(
            headers={
                "X-Gateway-User-Id": user,
                "X-Gateway-Key-Id": key_id,
                "X-Gateway-Scopes": "me:read",
                "X-Gateway-Auth": "api_key",
                "X-Gateway-Route": "api",
                "X-Request-Id": "-",
            }
        )

    app = web.Application()
    app.router.add_route("*", "/decisions/auth-request", decide)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
