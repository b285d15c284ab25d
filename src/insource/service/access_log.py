"""The access log: one line per request at info on `insource.access`, never prompt text, answers or keys.

The line is built only when the logger is enabled for info (checked once per worker), and the record is made
directly (no caller lookup), so with the log on a request costs a few microseconds more.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

ACCESS = logging.getLogger("insource.access")
_process_name: tuple[int, str | None] = (-1, None)  # (pid, its multiprocessing name): looked up once a process


def _process() -> str | None:
    global _process_name
    pid = os.getpid()
    if _process_name[0] != pid:
        name: str | None = "MainProcess"
        mp = sys.modules.get("multiprocessing")
        if mp is not None:
            name = mp.current_process().name
        _process_name = (pid, name)
    return _process_name[1]


class AccessRecord(logging.LogRecord):
    """The same attributes as `logging.LogRecord` (formatters and handlers see no difference), set directly:
    no caller path to split, and the process name looked up once per process (a third of LogRecord's cost)."""

    def __init__(self, msg: str, fields: dict[str, Any]) -> None:
        ct = time.time()
        self.name = ACCESS.name
        self.msg = msg
        self.args = ()
        self.levelname = "INFO"
        self.levelno = logging.INFO
        self.pathname = self.filename = ""
        self.module = ""
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = None  # type: ignore[assignment]  # as LogRecord sets it without a caller
        self.created = ct
        self.msecs = int((ct - int(ct)) * 1000) + 0.0
        self.relativeCreated = (ct - logging._startTime) * 1000  # type: ignore[attr-defined]
        if logging.logThreads:
            self.thread: int | None = threading.get_ident()
            self.threadName: str | None = threading.current_thread().name
        else:
            self.thread = self.threadName = None
        self.processName: str | None = _process() if logging.logMultiprocessing else None
        self.process: int | None = os.getpid() if logging.logProcesses else None
        self.fields = fields


def access_enabled() -> bool:
    return ACCESS.isEnabledFor(logging.INFO)


def _emit(message: str, fields: dict[str, Any]) -> None:
    ACCESS.handle(AccessRecord(message, fields))


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
