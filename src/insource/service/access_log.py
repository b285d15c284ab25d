"""The access log: one line per request at info on `insource.access`, never prompt text, answers or keys.

The line is built only when the logger is enabled for info (checked once per worker), and the record is made
directly (no caller lookup), so with the log on a request costs a few microseconds more.
"""

from __future__ import annotations

import logging
from typing import Any

ACCESS = logging.getLogger("insource.access")


def access_enabled() -> bool:
    return ACCESS.isEnabledFor(logging.INFO)


def _emit(message: str, fields: dict[str, Any]) -> None:
    record = ACCESS.makeRecord(ACCESS.name, logging.INFO, "", 0, message, (), None, extra={"fields": fields})
    ACCESS.handle(record)


def log_request(row: dict[str, Any]) -> None:
    """A metered request, from its usage record (counts and names only)."""
    _emit(
        "request",
        {
            "request_id": row["request_id"],
            "tenant": row["tenant"],
            "key_id": row["key_id"],
            "model": row["model"],
            "task": row["task"],
            "served_by": row["served_by"],
            "status": row["status"],
            "error_code": row["error_code"],
            "stream": row["stream"] == 1,
            "latency_ms": round(row["latency_ms"], 2),
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost_usd": row["cost_usd"],
        },
    )


def log_unmetered(request_id: str, method: str, path: str, status: int, code: str | None) -> None:
    """A request with no usage record: refused before a key was known (401, 405), or not metered (`/v1/models`,
    unknown paths)."""
    _emit(
        "request",
        {
            "request_id": request_id,
            "tenant": None,
            "method": method,
            "path": path[:200],
            "status": status,
            "error_code": code,
        },
    )
