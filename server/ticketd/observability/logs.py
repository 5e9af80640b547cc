"""`TICKETING_LOG_FORMAT=json`: one JSON object per log line, and one access line per RPC.

The access line (logger `ticketd.access`, INFO) carries method, principal, duration, code,
error reason and correlation id; it is written only in JSON mode, where a log pipeline
indexes it. In text mode the same facts are in the metrics, and a line per call would only
cost CPU on the hot path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any

access_log = logging.getLogger("ticketd.access")

_enabled = False

# Attributes every LogRecord has; anything else was passed with `extra=` and is a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, pid, the `extra` fields,
    and the exception's text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure(level: str, log_format: str) -> None:
    """Set up the root logger once at start: plain text (the default) or JSON lines."""
    global _enabled
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        _enabled = True
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _enabled = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def access_enabled() -> bool:
    """Whether the interceptor writes access lines (JSON mode, INFO enabled)."""
    return _enabled and access_log.isEnabledFor(logging.INFO)


def access(
    *,
    method: str,
    principal: str | None,
    duration_s: float,
    code: str,
    reason: str | None,
    correlation_id: str | None,
) -> None:
    """Write one access line for a finished RPC."""
    access_log.info(
        "rpc",
        extra={
            "method": method,
            "principal": principal,
            "duration_ms": round(duration_s * 1000, 3),
            "code": code,
            "reason": reason,
            "correlation_id": correlation_id,
        },
    )
