"""Log lines for people or for a log store: GPUQUEUE_LOG_FORMAT=text (the default) or json.

json writes one object per line, `{"ts", "level", "logger", "msg"}` plus `job_id`, `worker_id`,
`host`, `device` and `model` where they apply (queueing/log_context.py) and `exc` with a
traceback, so an operator can ask a log store for every line of one job or one GPU.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from queueing import log_context

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a message's newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in log_context.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def check_format(value: str) -> str:
    if value not in FORMATS:
        raise ValueError(f"GPUQUEUE_LOG_FORMAT must be text or json, got {value!r}")
    return value


def configure(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """The root logger of a command: `level`, lines in `log_format`, to stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    json_lines = check_format(log_format) == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(log_context.ContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
