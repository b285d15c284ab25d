"""Batched background writer: requests never wait on the database.

Items are queued in a bounded buffer and written in batches by one thread (flush on size or time).
When the buffer is full, items are spooled to disk as JSON lines and replayed later: never dropped
silently. Items may be rows, or deferred functions that produce rows in the writer thread (so costly
work such as redaction stays off the request path).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from insource.store.sqlite import Row, Store

log = logging.getLogger("insource.store")

WriteItem = tuple[str, Row, bool]  # table, row, ignore duplicates
Deferred = Callable[[], list[WriteItem]]


@dataclass
class WriterStats:
    submitted: int = 0
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    failed: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)


class BatchWriter:
    def __init__(
        self,
        store: Store,
        spool_dir: Path,
        *,
        max_queue: int = 50_000,
        batch_size: int = 1000,
        interval_s: float = 0.05,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.stats = WriterStats()
        self._queue: deque[WriteItem | Deferred] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stop = False
        self._spool_lock = threading.Lock()
        self._spool_file = spool_dir / f"spool-{uuid.uuid4().hex}.jsonl"
        self._thread = threading.Thread(target=self._run, name="insource-writer", daemon=True)
        self._thread.start()

    # -- producer side (hot path) -------------------------------------------------------------
    def submit(self, table: str, row: Row, *, ignore: bool = False) -> None:
        self._put((table, row, ignore))

    def submit_fn(self, fn: Deferred) -> None:
        self._put(fn)

    def _put(self, item: WriteItem | Deferred) -> None:
        self.stats.submitted += 1
        if len(self._queue) >= self.max_queue:
            self._spool(item)
            return
        self._queue.append(item)
        if len(self._queue) >= self.batch_size:
            with self._cond:
                self._cond.notify()

    def _spool(self, item: WriteItem | Deferred) -> None:
        try:
            rows = item() if callable(item) else [item]
            data = b"".join(orjson.dumps([t, r, i]) + b"\n" for t, r, i in rows)
            with self._spool_lock:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                with self._spool_file.open("ab") as fh:
                    fh.write(data)
            self.stats.spooled += len(rows)
        except (OSError, TypeError, ValueError) as exc:
            self.stats.dropped += 1
            log.error("writer: could not spool a record (%s); counted as dropped", type(exc).__name__)

    # -- consumer side -----------------------------------------------------------------------
    def _run(self) -> None:
        self._replay_spool()
        last_replay = time.monotonic()
        while True:
            with self._cond:
                if not self._queue and not self._stop:
                    self._cond.wait(self.interval_s)
                if self._stop and not self._queue:
                    return
                self._busy = True
            try:
                self._drain()
                if time.monotonic() - last_replay > 5.0:
                    self._replay_spool()
                    last_replay = time.monotonic()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _drain(self) -> None:
        while self._queue:
            batch: list[WriteItem] = []
            while self._queue and len(batch) < self.batch_size:
                item = self._queue.popleft()
                if callable(item):
                    batch.extend(self._run_deferred(item))
                else:
                    batch.append(item)
            self._write(batch)

    def _run_deferred(self, fn: Deferred) -> list[WriteItem]:
        try:
            return fn()
        except Exception as exc:  # a bug in a producer must not kill the writer; it is counted
            self.stats.failed += 1
            self._note_error(f"deferred record failed: {type(exc).__name__}: {exc}")
            log.exception("writer: a deferred record failed")
            return []

    def _write(self, batch: list[WriteItem]) -> None:
        if not batch:
            return
        try:
            self.store.write_batch(batch)
            self.stats.written += len(batch)
        except Exception as exc:  # database trouble: keep the rows on disk instead of losing them
            self._note_error(f"batch write failed: {type(exc).__name__}: {exc}")
            log.error("writer: batch write failed (%s); spooling %d rows", exc, len(batch))
            for item in batch:
                self._spool(item)

    def _note_error(self, text: str) -> None:
        self.stats.errors = [*self.stats.errors[-9:], text]

    def _replay_spool(self) -> None:
        if not self.spool_dir.exists():
            return
        with self._spool_lock:
            files = sorted(self.spool_dir.glob("spool-*.jsonl"))
            for file in files:
                claimed = file.with_suffix(".replaying")
                try:
                    file.rename(claimed)
                except OSError:
                    continue
                self._replay_file(claimed)

    def _replay_file(self, file: Path) -> None:
        rows: list[WriteItem] = []
        for line in file.read_bytes().splitlines():
            if line.strip():
                table, row, _ignore = orjson.loads(line)
                rows.append((table, row, True))
        try:
            for start in range(0, len(rows), self.batch_size):
                self.store.write_batch(rows[start : start + self.batch_size])
            self.stats.replayed += len(rows)
            file.unlink()
        except Exception as exc:  # leave the file for the next attempt
            self._note_error(f"spool replay failed: {exc}")
            file.rename(file.with_suffix(".jsonl"))

    # -- control -----------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written. True when drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
                self._cond.notify_all()
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def report(self) -> dict[str, Any]:
        s = self.stats
        return {
            "queued": self.pending(),
            "submitted": s.submitted,
            "written": s.written,
            "spooled": s.spooled,
            "replayed": s.replayed,
            "failed": s.failed,
            "dropped": s.dropped,
            "errors": list(s.errors),
        }
