"""The write-ahead journal: every usage record on disk before its answer's last byte leaves the worker.

The batched writer keeps records in memory for up to `interval_s` (and longer when the store stalls), so a
SIGKILL would lose the records of answers already sent. The journal closes that gap: each record is appended
with one `os.write` on an `O_APPEND` fd the worker keeps open (a few µs, no fsync; the page cache survives the
death of the process), and the writer deletes a journal segment once every record in it has reached the store
(or the spool, which is durable too).

Layout of the journal folder (`<store dir>/journal`):

    journal-OWNER.lock      locked (flock) by the live worker OWNER for as long as it runs
    journal-OWNER.N.jsonl   its segments; N grows; the highest is the one appended to

Segments of an owner whose lock is free (the process exited or was killed) are replayed into the store by the
next writer that starts, or by any live writer within `adopt_every_s`, with duplicates ignored by record id
(records that did reach the store before the crash are written once). Power loss can still take the page
cache: `[store] fsync = "batch"` has the writer thread fsync the active segment at most every `FSYNC_EVERY_S`
(1 s) and each segment when it closes it (every second while records arrive), never on the request path; so a
power loss can take the journal lines of about the last second (up to `FSYNC_EVERY_S` plus the time the writer
thread takes to get to it). `"off"` leaves it to the kernel (its dirty-page writeback, ~30 s by default). Records
that reached the store are as durable as the store makes them (SQLite: WAL with `synchronous=NORMAL`, which a
power loss can roll back to the last checkpoint).

A line is `[table, row, ignore, flags]`; `flags` says what else the request left for the writer (a capture), so a
replay can count what the journal does not hold (`captures_lost`) instead of losing it silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from insource.store.spool import _lock

log = logging.getLogger("insource.store")

Line = tuple[str, dict[str, Any], bool, int]
CAPTURE_PENDING = 1  # flag: a capture was queued with this record (it is not journaled)
ROTATE_BYTES = 4 << 20  # a segment is closed when it grows past this, or when it is old enough
FSYNC_EVERY_S = 1.0  # `fsync = "batch"`: the active segment is fsync'd at most this often (not per writer batch)


def _seq_of(path: Path) -> int:
    try:
        return int(path.name.split(".")[1])
    except (IndexError, ValueError):
        return 0


def decode_journal(data: bytes) -> tuple[list[Line], int]:
    """Lines of a journal segment, and how many were unreadable (a crash in mid-write, a corrupt disk)."""
    lines: list[Line] = []
    bad = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            table, row, _ignore, flags = orjson.loads(raw)
            if not isinstance(table, str) or not isinstance(row, dict) or not isinstance(flags, int):
                raise ValueError("not a journal line")
        except (orjson.JSONDecodeError, ValueError, TypeError):
            bad += 1
            continue
        lines.append((table, row, True, flags))
    return lines, bad


class Journal:
    """One worker's journal. `append` is called on the request path; the rest by the writer thread."""

    def __init__(self, folder: Path, *, fsync: str = "batch") -> None:
        self.folder = folder
        self.fsync = fsync
        self.owner = uuid.uuid4().hex
        self.lost = 0  # records that could not be journaled (a full disk): counted and logged
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        self._dirty = False  # appended since the last fsync
        self._closed_segments: list[Path] = []

    def _segment(self, owner: str, seq: int) -> Path:
        return self.folder / f"journal-{owner}.{seq}.jsonl"

    def _open_next(self) -> None:
        if self._lock_fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.folder / f"journal-{self.owner}.lock", wait=True)
        self._seq += 1
        self._fd = os.open(self._segment(self.owner, self._seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0

    # -- the request path ----------------------------------------------------------------------
    def append(self, line: bytes) -> bool:
        """One `write` of one whole line (the caller holds the writer's submit lock). False when it failed."""
        try:
            if self._fd is None:
                self._open_next()
            assert self._fd is not None
            written = os.write(self._fd, line)
            if written != len(line):  # only a full disk cuts a small write short: take the half line back
                os.ftruncate(self._fd, self._size)
                raise OSError(28, "short write to the journal")
            self._size += written
            self._dirty = True
            return True
        except OSError as exc:
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                log.error("journal: could not append a record (%s); %d lost so far, counted", exc, self.lost)
            return False

    # -- the writer thread ---------------------------------------------------------------------
    def rotate_due(self, *, force: bool = False) -> bool:
        return self._fd is not None and self._size > 0 and (force or self._size >= ROTATE_BYTES)

    def detach(self) -> int | None:
        """Close the active segment to new lines (the caller holds the submit lock): the next line opens the
        next segment. Returns its fd, for `close_segment` outside the lock (an fsync must not block requests)."""
        fd, self._fd = self._fd, None
        self._dirty = False  # its lines are fsync'd when it is closed
        if fd is not None:
            self._closed_segments.append(self._segment(self.owner, self._seq))
        return fd

    def close_segment(self, fd: int | None) -> None:
        if fd is not None:
            self._sync_fd(fd)
            os.close(fd)

    def needs_sync(self) -> bool:
        """Lines were appended to the active segment since its last fsync, and `fsync = "batch"`."""
        return self._dirty and self._fd is not None and self.fsync == "batch"

    def sync(self) -> None:
        """fsync the active segment when `fsync = "batch"` (the writer thread's cadence, never per request)."""
        fd = self._fd
        if fd is not None and self._dirty:
            self._dirty = False
            self._sync_fd(fd)

    def _sync_fd(self, fd: int) -> None:
        if self.fsync == "batch":
            try:
                os.fsync(fd)
            except OSError as exc:  # closed meanwhile (rotated), or a disk error: the next sync retries
                log.debug("journal: fsync failed: %s", exc)

    def drop_closed(self) -> None:
        """Every record of the closed segments has reached the store or the spool: delete them."""
        for path in self._closed_segments:
            path.unlink(missing_ok=True)
        self._closed_segments = []

    def close(self, *, committed: bool) -> None:
        """Stop journaling. When everything reached the store (or the spool), nothing is left behind."""
        self.close_segment(self.detach())
        if not committed or self._lock_fd is None:
            return
        self.drop_closed()
        with contextlib.suppress(OSError):
            (self.folder / f"journal-{self.owner}.lock").unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- adoption ------------------------------------------------------------------------------
    def gone_owners(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        owners = {p.name[len("journal-") :].split(".", 1)[0] for p in self.folder.glob("journal-*.jsonl")}
        owners.discard(self.owner)
        return sorted(owners)

    @contextlib.contextmanager
    def adopt(self, owner: str) -> Iterator[list[Path]]:
        """While held, the segments of a worker that is gone (none when it is alive or being adopted)."""
        try:
            fd = _lock(self.folder / f"journal-{owner}.lock", wait=False)
        except OSError:
            fd = None
        if fd is None:
            yield []
            return
        try:
            yield sorted(self.folder.glob(f"journal-{owner}.*.jsonl"), key=_seq_of)
            if not any(self.folder.glob(f"journal-{owner}.*.jsonl")):
                with contextlib.suppress(OSError):
                    (self.folder / f"journal-{owner}.lock").unlink()
        finally:
            os.close(fd)


def journal_line(table: str, row: dict[str, Any], flags: int) -> bytes:
    return orjson.dumps((table, row, True, flags)) + b"\n"
