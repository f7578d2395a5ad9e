from __future__ import annotations

import io
import json

from gateway.observability.accesslog import FIELDS, AccessLog, to_microsecond


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


def test_lines_are_batched_and_named() -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, max_pending=3)
    log.emit(_values(request_id="a"))
    log.emit(_values(request_id="b"))
    assert sink.getvalue() == b""
    log.emit(_values(request_id="c", upstream_ms=0.988))
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["a", "b", "c"]
    assert set(lines[0]) == set(FIELDS)
    assert lines[0]["duration_ms"] == 1.23456 and lines[2]["upstream_ms"] == 0.988


def test_durations_are_logged_to_the_microsecond() -> None:
    # The recorder rounds as it emits (half up: a duration is never negative).
    assert to_microsecond(1.23456) == 1.235
    assert to_microsecond(0.98765) == 0.988
    assert to_microsecond(0.0004) == 0.0
    assert to_microsecond(12.0) == 12.0
