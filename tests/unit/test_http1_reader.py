"""The sans-IO request reader, fed byte scripts (h11's test_io style)."""

from __future__ import annotations

import pytest

from gateway.http1.reader import (
    END,
    NEED_DATA,
    PAUSED,
    Data,
    End,
    Failure,
    Head,
    RequestReader,
    State,
)

Summary = tuple[str, ...]


def reader(max_body: int = 1 << 20) -> RequestReader:
    return RequestReader(max_header_bytes=1024, max_body_bytes=max_body)


def run(feeds: list[bytes], *, upgrade_switch: bool = False) -> tuple[list[Summary], bytes]:
    """Feed the reads in order, answering each request at once; the events, summarised
    (body data joined per request), and what a switch handed over."""
    r = reader()
    events: list[Summary] = []
    body = b""
    handed = b""
    for data in feeds:
        r.receive(data)
        while True:
            event = r.next_event()
            if isinstance(event, Head):
                events.append(("head", event.method, event.target))
            elif isinstance(event, Data):
                body += event.data
            elif isinstance(event, End):
                events.append(("end", body.decode()))
                body = b""
            elif isinstance(event, Failure):
                events.append(("failure", str(event.status), event.slug))
                break
            elif event is PAUSED and r.state is State.DONE:
                if upgrade_switch:
                    handed = r.switch()
                    return events, handed + b"".join(feeds[feeds.index(data) + 1 :])
                events.append(("answered",))
                r.next_request()
            else:
                break
    return events, handed


def whole(script: bytes) -> list[Summary]:
    return run([script])[0]


PIPELINED = (
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n"
)
EXPECTED = [
    ("head", "POST", "/a"),
    ("end", "hello"),
    ("answered",),
    ("head", "POST", "/b"),
    ("end", "abcde"),
    ("answered",),
    ("head", "GET", "/c"),
    ("answered",),
]


def test_pipelined_requests_behind_length_and_chunked_bodies() -> None:
    # A bodiless request has no End event: its Head is the whole request.
    assert whole(PIPELINED) == EXPECTED


def test_split_at_every_offset_reads_the_same() -> None:
    for cut in range(1, len(PIPELINED)):
        assert run([PIPELINED[:cut], PIPELINED[cut:]])[0] == EXPECTED, cut


def test_one_byte_at_a_time_reads_the_same() -> None:
    assert run([bytes([b]) for b in PIPELINED])[0] == EXPECTED


def test_a_body_ending_exactly_at_a_read_boundary() -> None:
    head = b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n"
    assert run([head, b"ab", b"cd"])[0] == [("head", "PUT", "/x"), ("end", "abcd"), ("answered",)]
    chunked = b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    reads = [chunked, b"2\r\nab\r\n", b"0\r\n\r\n"]
    assert run(reads)[0] == [("head", "PUT", "/x"), ("end", "ab"), ("answered",)]


def test_the_next_request_waits_until_the_answer_is_done() -> None:
    r = reader()
    r.receive(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\r\n\r\n")
    assert isinstance(r.next_event(), Head)
    # The malformed request behind is not read before the first one is answered.
    assert r.next_event() is PAUSED
    assert r.buffered > 0
    r.next_request()
    assert isinstance(r.next_event(), Failure)
    assert r.state is State.ERROR and r.next_event() is PAUSED


def test_upgrade_hands_over_the_bytes_after_the_head() -> None:
    script = (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05frame"
    )
    r = reader()
    r.receive(script)
    head = r.next_event()
    assert isinstance(head, Head) and head.upgrade
    assert head.raw == script[: script.index(b"\r\n\r\n") + 4]
    assert r.next_event() is PAUSED
    assert r.switch() == b"\x81\x05frame"
    assert r.state is State.SWITCHED and r.next_event() is PAUSED
    events, handed = run([script[:20], script[20:]], upgrade_switch=True)
    assert events == [("head", "GET", "/ws")] and handed == b"\x81\x05frame"


def test_a_refused_upgrade_goes_on_as_http() -> None:
    script = (
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert whole(script) == [
        ("head", "GET", "/a"),
        ("answered",),
        ("head", "GET", "/b"),
        ("answered",),
    ]


def test_connect_is_read_as_a_head_that_keeps_nothing_alive() -> None:
    r = reader()
    r.receive(b"CONNECT /pub/x HTTP/1.1\r\nHost: h\r\n\r\ntunnel bytes")
    head = r.next_event()
    assert isinstance(head, Head) and head.method == "CONNECT" and not head.keep_alive


@pytest.mark.parametrize(
    ("script", "status", "slug"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, None),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
            400,
            None,
        ),
        (b"GET / HTTP/1.1\nHost: h\n\n", 400, None),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400, None),
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: " + b"a" * 2000 + b"\r\n\r\n", 431, None),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: " + b"a" * 2000, 431, None),
    ],
)
def test_heads_that_cannot_be_framed_safely_fail(
    script: bytes, status: int, slug: str | None
) -> None:
    r = reader()
    r.receive(script)
    event = r.next_event()
    assert isinstance(event, Failure), event
    assert event.status == status
    assert r.state is State.ERROR


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhello\r\n0\n\r\n",  # bare LF after the last chunk size
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after a size
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",  # 17 hex digits
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        b"5\r\nhello\r\n0\r\n folded: x\r\n\r\n",
    ],
)
def test_broken_chunked_framing_fails(body: bytes) -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = whole(head + body)
    assert events[0] == ("head", "POST", "/")
    assert events[-1][0] == "failure" and events[-1][1] == "400", events


def test_trailers_are_read_and_dropped() -> None:
    r = reader()
    r.receive(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nX-Real-IP: 1.2.3.4\r\nContent-Type: text/evil\r\n\r\n"
    )
    events = []
    while (event := r.next_event()) is not PAUSED:
        events.append(event)
    assert events[1:] == [Data(b"a"), END]
    head = events[0]
    assert isinstance(head, Head)
    assert [name for name, _ in head.raw_headers] == [b"Host", b"Transfer-Encoding"]


def test_a_trailer_section_is_bounded() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    events = whole(head + b"X: " + b"a" * 2000 + b"\r\n\r\n")
    assert events[-1] == ("failure", "431", "headers-too-large")


def test_a_chunked_body_over_the_limit_fails_as_soon_as_it_crosses_it() -> None:
    r = reader(max_body=10)
    r.receive(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
    assert isinstance(r.next_event(), Head)
    assert r.next_event() == Data(b"12345678")
    assert r.next_event() is NEED_DATA
    r.receive(b"8\r\n")
    event = r.next_event()
    assert isinstance(event, Failure) and event.status == 413


def test_a_length_body_is_passed_without_a_copy_when_a_read_is_all_body() -> None:
    r = reader()
    r.receive(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
    assert isinstance(r.next_event(), Head)
    assert r.next_event() is NEED_DATA
    piece = b"x" * 65536
    r.receive(piece)
    event = r.next_event()
    assert isinstance(event, Data) and event.data is piece


def test_next_request_and_switch_only_after_a_whole_request() -> None:
    r = reader()
    with pytest.raises(RuntimeError):
        r.next_request()
    with pytest.raises(RuntimeError):
        r.switch()


def test_keep_alive_follows_the_version_and_connection_header() -> None:
    r = reader()
    r.receive(b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head = r.next_event()
    assert isinstance(head, Head) and not head.keep_alive
    r = reader()
    r.receive(b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n")
    head = r.next_event()
    assert isinstance(head, Head) and not head.keep_alive
    r = reader()
    r.receive(b"GET /a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    head = r.next_event()
    assert isinstance(head, Head) and head.keep_alive


@pytest.mark.parametrize(
    ("script", "version"),
    [
        (b"GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n", (1, 1)),
        (b"DELETE /a HTTP/1.0\r\nHost: h\r\n\r\n", (1, 0)),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", (1, 1)),
        (b"\r\nGET /%20x HTTP/1.1\r\nHost: h\r\n\r\n", (1, 1)),  # after an empty line
    ],
)
def test_the_version_is_read_off_the_request_line(script: bytes, version: tuple[int, int]) -> None:
    r = reader()
    r.receive(script)
    head = r.next_event()
    assert isinstance(head, Head) and head.version == version


@pytest.mark.parametrize("line", [b"GET / HTTP/0.9", b"GET / HTTP/1.2", b"GET / HTTP/3.0"])
def test_versions_other_than_1_0_and_1_1_are_refused(line: bytes) -> None:
    r = reader()
    r.receive(line + b"\r\nHost: h\r\n\r\n")
    event = r.next_event()
    assert isinstance(event, Failure) and event.status == 400
