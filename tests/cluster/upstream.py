"""The cluster's upstream host: answers every request with a small JSON body."""

from __future__ import annotations

import sys

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"path": request.path, "host": sys.argv[1]})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None)
