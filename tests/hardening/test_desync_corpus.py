"""Request-framing cases taken from llhttp's own test fixtures (test/request/*.md,
its strict mode), sent over raw sockets to the proxy port: every case llhttp
classes an error is refused (4xx/501, connection closed) with nothing forwarded;
every compliant one is served, with the body the upstream receives checked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.rawhttp import exchange, port_of
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    gateway_with_routes,
)

ROUTES = (
    "upstream: core\nroutes:\n"
    "  - {methods: ['*'], path: '/{rest...}', public: true}\n"
    "  - {methods: ['*'], path: '/', public: true}\n"
)


def crlf(text: str) -> bytes:
    """The fixtures write lines with LF; on the wire they end in CRLF. A literal
    `\\r` or `\\n` in a fixture stays a lone byte (that is the case being tested)."""
    return text.replace("\n", "\r\n").replace("\\r", "\r").replace("\\n", "\n").encode("latin-1")


# (name, request, the body the upstream must receive)
SERVED = [
    (
        "lower-case size",
        "PUT /url HTTP/1.1\nTransfer-Encoding: chunked\n\na\n0123456789\n0\n\n",
        "0123456789",
    ),
    (
        "upper-case size",
        "PUT /url HTTP/1.1\nTransfer-Encoding: chunked\n\nA\n0123456789\n0\n\n",
        "0123456789",
    ),
    (
        "all your base",
        "POST /post_chunked_all_your_base HTTP/1.1\nTransfer-Encoding: chunked\n\n"
        "1e\nall your base are belong to us\n0\n\n",
        "all your base are belong to us",
    ),
    (
        "triple-zero end chunk",
        "POST /two_chunks_mult_zero_end HTTP/1.1\nTransfer-Encoding: chunked\n\n"
        "5\nhello\n6\n world\n000\n\n",
        "hello world",
    ),
    (
        "trailing headers",
        "POST /chunked_w_trailing_headers HTTP/1.1\nTransfer-Encoding: chunked\n\n"
        "5\nhello\n6\n world\n0\nVary: *\nContent-Type: text/plain\n\n",
        "hello world",
    ),
    (
        "chunk extensions",
        "POST /chunked_w_unicorns_after_length HTTP/1.1\nTransfer-Encoding: chunked\n\n"
        "5;ilovew3;somuchlove=aretheseparametersfor;another=withvalue\nhello\n"
        "6;blahblah;blah\n world\n0\n\n",
        "hello world",
    ),
    (
        "quoted chunk extensions",
        "POST /chunked_w_unicorns_after_length HTTP/1.1\nTransfer-Encoding: chunked\n\n"
        '5;ilovew3="I \\"love\\"; \\\\extensions\\\\";somuchlove="aretheseparametersfor";blah;foo=bar\n'
        "hello\n6;blahblah;blah\n world\n0\n\n",
        "hello world",
    ),
    ("content-length", "POST /cl HTTP/1.1\nContent-Length: 5\n\nhello", "hello"),
    ("empty body", "POST /cl HTTP/1.1\nContent-Length: 0\n\n", ""),
]

# (name, request): llhttp's strict mode answers each with an error.
REFUSED = [
    ("empty TE with CL", "POST /first HTTP/1.1\nTransfer-Encoding:\nContent-Length: 5\n\nhello"),
    (
        "no semicolon before extension",
        "POST /x HTTP/1.1\nHost: localhost\nTransfer-encoding: chunked\n\n2 erfrferferf\naa\n0 rrrr\n\n",
    ),
    (
        "no extension after semicolon",
        "POST /x HTTP/1.1\nHost: localhost\nTransfer-encoding: chunked\n\n2;\naa\n0\n\n",
    ),
    (
        "unbalanced quoting",
        'POST /x HTTP/1.1\nTransfer-Encoding: chunked\n\n5;ilovew3="abc";somuchlove="def; ghi\nhello\n6;blahblah;blah\n world\n0\n\n',
    ),
    ("pigeons", "PUT /url HTTP/1.1\nTransfer-Encoding: pigeons\n\n"),
    (
        "identity with CL",
        "POST /p HTTP/1.1\nAccept: */*\nTransfer-Encoding: identity\nContent-Length: 5\n\nWorld",
    ),
    (
        "chunked before another coding",
        "POST /p HTTP/1.1\nAccept: */*\nTransfer-Encoding: chunked, deflate\n\nWorld",
    ),
    (
        "chunked then deflate headers",
        "POST /p HTTP/1.1\nAccept: */*\nTransfer-Encoding: chunked\nTransfer-Encoding: deflate\n\nWorld",
    ),
    (
        "chunkedchunked",
        "POST /p HTTP/1.1\nAccept: */*\nTransfer-Encoding: chunkedchunked\n\n5\nWorld\n0\n\n",
    ),
    ("missing last chunk", "PUT /url HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nfoo\n\n"),
    (
        "chunk parameters with bare LF",
        "PUT /url HTTP/1.1\nTransfer-Encoding: chunked\n\n3 \\n  \\r\\n\\\nfoo\n\n",
    ),
    (
        "obs-fold after chunked",
        "PUT /url HTTP/1.1\nTransfer-Encoding: chunked\n  abc\n\n5\nWorld\n0\n\n",
    ),
    (
        "size line ended by CR CR",
        "GET / HTTP/1.1\nHost: a\nConnection: close \nTransfer-Encoding: chunked \n\n5\\r\\r;ABCD\n34\nE\n0\n\nGET / HTTP/1.1 \nHost: a\nContent-Length: 5\n\n0\n",
    ),
    (
        "data not ended by CRLF",
        "GET / HTTP/1.1\nHost: a\nConnection: close \nTransfer-Encoding: chunked \n\n5\nABCDE0\n\n",
    ),
    (
        "space after size",
        "PUT /url HTTP/1.1\nTransfer-Encoding: chunked\n\na \\r\\n0123456789\n0\n\n",
    ),
    (
        "deflate then chunked",
        "POST /p HTTP/1.1\nAccept: */*\nTransfer-Encoding: deflate, chunked\n\n5\nWorld\n0\n\n",
    ),
    ("two lengths", "POST /p HTTP/1.1\nContent-Length: 5\nContent-Length: 6\n\nhello!"),
    ("length with a space", "POST /p HTTP/1.1\nContent-Length: 4 2\n\n"),
    ("negative length", "POST /p HTTP/1.1\nContent-Length: -5\n\n"),
    ("folded length", "POST /p HTTP/1.1\nContent-Length: 4\n 2\n\n"),
    ("bare LF head", "GET / HTTP/1.1\\nHost: a\\n\\n"),
    ("CONNECT origin form", "CONNECT /pub/x HTTP/1.1\nHost: a\n\n"),
]


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    async with gateway_with_routes(tmp_path, database_url, upstream.url, ROUTES) as running:
        yield running


@pytest.mark.parametrize(("name", "text", "body"), SERVED, ids=[c[0] for c in SERVED])
async def test_compliant_cases_are_served(
    gateway: RunningGateway, upstream: RecordingUpstream, name: str, text: str, body: str
) -> None:
    replies, _closed = await exchange(
        port_of(gateway.proxy), crlf(text.replace("\n", "\nHost: x\n", 1)), expect=1
    )
    assert [r.status for r in replies] == [200], name
    assert [r.body for r in upstream.received] == [body.encode()]
    forwarded = json.loads(replies[0].body) if replies[0].body.startswith(b"{") else {}
    for trailer in ("Vary", "Content-Type"):
        assert trailer not in forwarded.get("headers", {})


@pytest.mark.parametrize(("name", "text"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_dangerous_cases_are_refused_and_never_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, name: str, text: str
) -> None:
    replies, closed = await exchange(port_of(gateway.proxy), crlf(text), seconds=1.5)
    assert len(replies) == 1, name
    assert replies[0].status in (400, 405, 501), (name, replies[0].status)
    assert replies[0].headers["content-type"] == "application/problem+json"
    assert closed
    assert upstream.received == []


def test_the_corpus_is_not_trivial() -> None:
    assert len(SERVED) + len(REFUSED) >= 30
