from __future__ import annotations

import io
import json

from gateway.observability.accesslog import FIELDS, AccessLog


def _values(**changes: object) -> tuple[object, ...]:
    record: dict[str, object] = dict.fromkeys(FIELDS)
    record.update({"time": 1.5, "status": 200, "duration_ms": 1.23456, **changes})
    return tuple(record[field] for field in FIELDS)


def test_access_log_survives_undecodable_request_bytes() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink)
    log.emit(_values(path="/v1/\udcff", status=400))
    log.flush()
    line = json.loads(sink.getvalue())
    assert line["path"] == "/v1/\\udcff" and line["status"] == 400


def test_lines_are_batched_rounded_and_named() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, max_pending=3)
    log.emit(_values(request_id="a"))
    log.emit(_values(request_id="b"))
    assert sink.getvalue() == b""
    log.emit(_values(request_id="c", upstream_ms=0.98765))
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["a", "b", "c"]
    assert set(lines[0]) == set(FIELDS)
    assert lines[0]["duration_ms"] == 1.235 and lines[2]["upstream_ms"] == 0.988
