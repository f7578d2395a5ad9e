"""aiohttp's server with our protocol limits, for the admin listener (the only one
aiohttp serves: the proxy and decision listeners are the gateway's own, `edge.inbound`).

aiohttp answers parser errors in text/plain and calls an over-long header line
a 400; here they are problem+json, and header size is a 431. The keep-alive
timer, which aiohttp arms from the accept and from the end of each response,
closes a connection whose headers are not complete in time (slowloris).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from aiohttp import HttpVersion11, web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.http_parser import HttpRequestParserPy

from gateway.foundation.config import Limits
from gateway.foundation.problems import Problem

log = logging.getLogger("gateway.listener")


class _StrictPyParser(HttpRequestParserPy):
    """aiohttp's pure-Python parser upper-cases the method (the C parser does not):
    refuse a lower-case method before that, so both parsers answer it with 400."""

    def parse_message(self, lines: list[bytes]) -> Any:
        method = lines[0].split(b" ", 1)[0]
        if method != method.upper():
            raise BadHttpMethod(method.decode("latin-1"))
        return super().parse_message(lines)


class GuardedHandler(web_protocol.RequestHandler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self._parser) is HttpRequestParserPy:
            self._parser.__class__ = _StrictPyParser

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if request.version != HttpVersion11:
            # aiohttp writes the status line in the request's version, which for a message
            # it could not parse is 1.0 (or the client's 2.0): every listener answers 1.1.
            request._version = HttpVersion11
            request._cache.pop("version", None)  # `version` is a cached property
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)
        ):
            problem = Problem(431, "headers-too-large", "the request headers are too large")
        elif status == 400:
            problem = Problem(400, "bad-request", "the request could not be parsed")
        else:
            log.error("error handling a request", exc_info=exc)
            problem = Problem(500, "internal-error", "the gateway failed to handle the request")
        response = problem.response(secrets.token_hex(16))
        response.force_close()
        return response


class GuardedServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


def server(handler: Any, limits: Limits) -> GuardedServer:
    return GuardedServer(handler, **server_limits(limits))


def server_limits(limits: Limits) -> dict[str, Any]:
    """aiohttp's server settings for our limits (a low-level server or an `AppRunner`)."""
    return {
        "keepalive_timeout": limits.header_timeout_seconds,
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        # Every header line takes at least 4 bytes, so this count can only be
        # exceeded by a header section that is over the byte limit anyway.
        "max_headers": limits.max_header_bytes // 4 + 1,
        "access_log": None,
    }


def guard(runner: web.AppRunner) -> None:
    """An application's runner (after `setup()`), answering parse errors as we do."""
    assert runner.server is not None
    runner.server.__class__ = GuardedServer  # the same server, our handler class
