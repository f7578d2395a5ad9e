"""Process logging: diagnostics to stderr, so stdout carries only the access log.

`logging.format: json` writes one JSON object a line (`time`, `level`, `logger`,
`message`, and `error` with the traceback when there is one), what log collectors
in containers expect; `text` is for people at a terminal. Unset: text on a
terminal, JSON otherwise.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def configure_logging(format_name: str | None = None) -> None:
    """`json`, `text`, or None: text on a terminal, JSON otherwise."""
    if format_name is None:
        format_name = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if format_name == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
