"""The cluster's upstream host: answers every request with a small JSON body (which
says the key metadata it was sent)."""

from __future__ import annotations

import sys

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    await request.read()
    meta = request.headers.get("X-Gateway-Key-Meta")  # the key's metadata, as it came
    return web.json_response({"path": request.path, "host": sys.argv[1], "meta": meta})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None)
