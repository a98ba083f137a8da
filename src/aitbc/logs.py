"""Logging for the coordinator and the miner: readable lines by default, one JSON
object per line with ``AITBC_LOG_FORMAT=json`` (for Loki, Elasticsearch,
CloudWatch...).

Every record made while a request is served carries that request's id (the
``X-Request-Id`` it came with, if sane, or a new one; ``api.observability`` sets it),
and structured fields passed as ``extra`` (``job_id``, ``miner_id``, ``status``,
``duration_ms``...) become JSON members or ``key=value`` pairs. What is logged is
chosen where it is logged: ids, statuses, counts and timings; never API keys,
prompts or results (tests check it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

# The id of the request being served, for every log record made while it is.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aitbc_request_id", default=None
)
# Structured fields: attributes a LogRecord has whatever the caller passes.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: value
        for name, value in record.__dict__.items()
        if name not in _STANDARD_ATTRIBUTES and not name.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> [key=value ...]``."""

    def format(self, record: logging.LogRecord) -> str:
        """One readable line (a traceback, if any, on the lines after)."""
        fields = _fields(record)
        request_id = getattr(record, "request_id", None)
        if request_id:
            fields["request_id"] = request_id
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line += " [" + " ".join(f"{key}={value}" for key, value in fields.items()) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the
    request id and the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            document["request_id"] = request_id
        document.update(_fields(record))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Send every logger's records (uvicorn's too) to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # One line per outgoing request would drown a miner's own log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
