"""Diagnostics as JSON lines (§20) or text: one object a line, with the fields
collectors index on, tracebacks inside the line."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.observability.diagnostics import configure_logging


def test_json_lines_carry_time_level_logger_message_and_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json")
    try:
        logging.getLogger("gateway.test").warning("database unavailable: %s", "TimeoutError")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("gateway.test").exception("failed")
        lines = capsys.readouterr().err.splitlines()
    finally:
        configure_logging("text")
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "warning" and first["logger"] == "gateway.test"
    assert first["message"] == "database unavailable: TimeoutError"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["error"]


def test_text_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text")
    logging.getLogger("gateway.test").info("proxy listening on %s:%s", "0.0.0.0", 8080)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("INFO gateway.test: proxy listening on 0.0.0.0:8080")
