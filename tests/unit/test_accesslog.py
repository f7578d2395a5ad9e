from __future__ import annotations

import io

from gateway.accesslog import AccessLog


def test_access_log_survives_undecodable_request_bytes() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink)
    log.emit({"path": "/v1/\udcff", "status": 400})
    log.flush()
    assert sink.getvalue() == b'{"path":"/v1/\\\\udcff","status":400}\n'


def test_lines_are_batched_and_flushed_together() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, max_pending=3)
    log.emit({"n": 1})
    log.emit({"n": 2})
    assert sink.getvalue() == b""
    log.emit({"n": 3})
    assert sink.getvalue() == b'{"n":1}\n{"n":2}\n{"n":3}\n'
