"""The writer's spool: rows not written to the store yet, as JSON lines on disk, each file owned by one writer.

Layout of the spool folder:

    spool-OWNER.lock            locked (flock) by the live writer OWNER for as long as it runs
    spool-OWNER.jsonl           OWNER's active file, appended to
    spool-OWNER.N.replaying     a closed file waiting to be written to the store
    rejected-OWNER.jsonl        rows the store refused on their own (kept for inspection, counted as failed)

A writer replays its own closed files, and all files of writers that are gone (their lock is free: the
process exited, crashed or was killed), never the files of a live writer, so no two processes ever append to,
read or delete the same file. Appends are one `write` each and are cut back when they fail (a full disk), so
a half line is only ever left by a crash in mid-write; replay skips it and counts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("insource.store")

WriteItem = tuple[str, dict[str, Any], bool]  # table, row, ignore duplicates


def encode(rows: Sequence[WriteItem]) -> bytes:
    """JSON lines for rows (raises TypeError/ValueError for a row JSON cannot hold)."""
    return b"".join(orjson.dumps([t, r, i]) + b"\n" for t, r, i in rows)


def decode(data: bytes) -> tuple[list[WriteItem], int]:
    """Rows from JSON lines, to be written with duplicates ignored; and how many lines were unreadable."""
    rows: list[WriteItem] = []
    bad = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            table, row, _ignore = orjson.loads(line)
            if not isinstance(table, str) or not isinstance(row, dict):
                raise ValueError("not a row")
        except (orjson.JSONDecodeError, ValueError, TypeError):
            bad += 1
            continue
        rows.append((table, row, True))
    return rows, bad


def _owner_of(path: Path) -> str:
    return path.name[len("spool-") :].split(".", 1)[0]


def _lock(path: Path, *, wait: bool) -> int | None:
    """An fd holding the flock of the file now at `path`; None when another process holds it and `wait` is false.
    An adopter unlinks the lock file of a writer it has replayed: a lock taken on that unlinked file is retried."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        os.close(fd)
        if not wait:
            return None


def _append(path: Path, data: bytes) -> None:
    """Append `data` with one write; on failure, cut the file back so no half line stays behind."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


class Spool:
    """One writer's side of the spool folder (thread-safe)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.owner = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._owner_fd: int | None = None
        self._seq = 0
        self._dirty = False  # appended to since the last rotation

    def _path(self, owner: str, suffix: str) -> Path:
        return self.folder / f"spool-{owner}{suffix}"

    def append(self, rows: Sequence[WriteItem]) -> None:
        """Put rows on disk (raises OSError, TypeError or ValueError; then nothing of them was kept)."""
        if not rows:
            return
        data = encode(rows)
        with self._lock:
            if self._owner_fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._owner_fd = _lock(self._path(self.owner, ".lock"), wait=True)
            _append(self._path(self.owner, ".jsonl"), data)
            self._dirty = True

    def append_rejected(self, rows: Sequence[WriteItem]) -> None:
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            _append(self.folder / f"rejected-{self.owner}.jsonl", encode(rows))

    def rotate(self) -> list[Path]:
        """Close the active file (new rows go to a new one) and list this writer's files to replay, oldest first."""
        with self._lock:
            if self._dirty:
                self._seq += 1
                with contextlib.suppress(FileNotFoundError):
                    self._path(self.owner, ".jsonl").rename(self._path(self.owner, f".{self._seq}.replaying"))
                self._dirty = False
            if self._owner_fd is None:
                return []
            own = self.folder.glob(f"spool-{self.owner}.*.replaying")
            return sorted(own, key=lambda p: int(p.name.split(".")[1]))

    def release(self) -> None:
        """Stop owning: what is left becomes any writer's to replay. Later appends go under a new name."""
        with self._lock:
            if self._owner_fd is not None:
                if not any(p.suffix in (".jsonl", ".replaying") for p in self.folder.glob(f"spool-{self.owner}.*")):
                    with contextlib.suppress(OSError):
                        self._path(self.owner, ".lock").unlink()  # nothing left: no litter
                os.close(self._owner_fd)
                self._owner_fd = None
                self.owner, self._seq, self._dirty = uuid.uuid4().hex, 0, False

    def gone_owners(self) -> list[str]:
        """Owners with files on disk other than this writer (alive or not: `adopt` tells)."""
        if not self.folder.is_dir():
            return []
        owners = {
            _owner_of(p)
            for p in self.folder.glob("spool-*")
            if p.suffix in (".jsonl", ".replaying") and _owner_of(p) != self.owner
        }
        return sorted(owners)

    @contextlib.contextmanager
    def adopt(self, owner: str) -> Iterator[list[Path]]:
        """While held, the files of a writer that is gone (none when it is alive or another writer adopted it)."""
        try:
            fd = _lock(self._path(owner, ".lock"), wait=False)
        except OSError:
            fd = None
        if fd is None:  # its writer runs, or another one is replaying it
            yield []
            return
        try:
            files = [p for p in self.folder.glob(f"spool-{owner}.*") if p.suffix in (".jsonl", ".replaying")]
            yield sorted(files, key=lambda p: (p.suffix == ".jsonl", p.name))
            if not any(p.suffix in (".jsonl", ".replaying") for p in self.folder.glob(f"spool-{owner}.*")):
                with contextlib.suppress(OSError):
                    self._path(owner, ".lock").unlink()  # still locked by us: nobody adopts it meanwhile
        finally:
            os.close(fd)
