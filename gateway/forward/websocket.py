"""WebSocket upgrades on routes that allow GET: authorised like any request, then
relayed frame by frame. The upstream handshake carries the headers the gateway's
own reader read (the same identity headers as any forwarded request); aiohttp's
server only answers the client's handshake.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.forward.upstreams import UpstreamTarget
from gateway.problems import Problem

# The client library writes its own handshake; these would clash with it.
_HANDSHAKE = ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions")


def is_upgrade(method: str, headers: CIMultiDictProxy[str]) -> bool:
    return method == "GET" and headers.get("Upgrade", "").lower() == "websocket"


async def relay(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    raw_target: str,
    upstream: UpstreamTarget,
    headers: CIMultiDict[str],
    extra: dict[str, str],
) -> web.StreamResponse:
    offered = headers.popall("Sec-WebSocket-Protocol", [])
    protocols = [p.strip() for value in offered for p in value.split(",") if p.strip()]
    for name in _HANDSHAKE:
        headers.popall(name, None)
    try:
        upstream_ws = await session.ws_connect(
            URL(upstream.base + raw_target, encoded=True),
            headers=headers,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
            autoclose=False,
            autoping=False,
        )
    except TimeoutError:
        raise Problem(504, "upstream-timeout", f"upstream {upstream.name} timed out") from None
    except aiohttp.ClientError:
        raise Problem(502, "upstream-unreachable", f"upstream {upstream.name} failed") from None
    chosen = (upstream_ws.protocol,) if upstream_ws.protocol else ()
    client_ws = web.WebSocketResponse(protocols=chosen, autoclose=False, autoping=False)
    client_ws.headers.update(extra)
    async with upstream_ws:
        await client_ws.prepare(request)
        await _pump_both(client_ws, upstream_ws)
    return client_ws


async def _pump_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    tasks = [
        asyncio.create_task(_pump(client, upstream)),
        asyncio.create_task(_pump(upstream, client)),
    ]
    _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for ws in (client, upstream):
        if not ws.closed:
            await ws.close()


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    target: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await target.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await target.send_bytes(message.data)
        elif message.type == WSMsgType.PING:
            await target.ping(message.data)
        elif message.type == WSMsgType.PONG:
            await target.pong(message.data)
        elif message.type == WSMsgType.CLOSE:
            reason = message.extra if isinstance(message.extra, str) else ""
            await target.close(code=message.data or 1000, message=reason.encode())
            return
        else:
            return
