"""The process's one log format: one JSON object a line, on standard error.

Every record, uvicorn's included, is written by :class:`JsonFormatter` as
``{"ts", "level", "logger", "msg"}``, plus ``request_id`` when it is logged while a request
is being served (:data:`REQUEST_ID`, set by :class:`app.observe.Observe`), plus the fields a
record carries in ``extra={"fields": {...}}`` (the access log's), plus ``exc`` with the
traceback when there is one (escaped into the same line).

Standard error, because that is where the interpreter, uvicorn and native libraries write
whatever escapes logging (a fatal error, a faulthandler dump): with the log there too, an
operator reads one stream, in order. Standard output stays free for what a command prints
(``python -m app --help``).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

import orjson

__all__ = ["REQUEST_ID", "JsonFormatter", "log_config"]

# The id of the request being served in this context (None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("convengine_request_id", default=None)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO 8601 UTC, milliseconds), level, logger, msg, ..."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exc"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def log_config(level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the service (uvicorn's ``log_config``).

    Every logger reaches the root's one handler; uvicorn's own loggers are emptied of theirs.
    The access log (``convengine.access``) is written whatever the level, as before.
    """
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
        "handlers": {"json": handler},
        "root": {"handlers": ["json"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "py.warnings")
        }
        | {"convengine.access": {"handlers": ["json"], "level": "INFO", "propagate": False}},
    }
