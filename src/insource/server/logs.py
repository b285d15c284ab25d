"""Logging for `insource serve`: level and format chosen on the command line, the same in every worker.

The setup is a `logging.config.dictConfig` mapping handed to uvicorn (`log_config`), which applies it in the
main process and again in each worker it spawns, so `--log-level` and `--log-format` reach them all.
uvicorn's own access log stays off: insource writes one richer line per request (`insource.access`).

Records may carry structured fields (`extra={"fields": {...}}`): the text format appends them as `key=value`
(values with spaces, quotes or control characters JSON-quoted, so a line cannot be forged); the JSON format
puts them at the top level of one JSON object per line.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+()-]")


def key_values(fields: dict[str, Any]) -> str:
    """`k=v k=v`: None as `-`, floats to 6 significant digits, text JSON-quoted unless plain (one pass, inline)."""
    parts = []
    for key, value in fields.items():
        kind = value.__class__
        if kind is str:
            plain = value and _UNSAFE.search(value) is None
            parts.append(f"{key}={value}" if plain else f"{key}={orjson.dumps(value).decode()}")
        elif value is None:
            parts.append(f"{key}=-")
        elif kind is float:
            parts.append(f"{key}={value:.6g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text (one strftime a second)


def _iso(created: float) -> str:
    whole = int(created)
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-12-06T22:00:00.123Z INFO insource.access: request request_id=req_… status=200 …`"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " " + key_values(fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """The dictConfig for the gateway's processes (insource's loggers and uvicorn's)."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": "insource", "stream": "ext://sys.stderr"}
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"insource": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"stderr": handler},
        "loggers": {
            "insource": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
