"""Batched background writer: requests never wait on the database.

Items are queued in a bounded buffer and written in batches by one thread (flush on size or time). Items may be
rows, or deferred functions that produce rows in the writer thread (so costly work such as redaction stays off
the request path). Nothing is dropped silently; what cannot be written yet goes to the spool on disk
(`spool.py`) and is written later, by this writer or, when it is gone, by the next one that starts:

- the buffer is full: the item is spooled at once;
- a batch fails: its rows are spooled;
- the store stalls (a write has taken longer than `stall_s`, e.g. a lock held elsewhere): a guard thread spools a
  copy of the batch being written and then, every `stall_s / 4`, the buffer, so memory holds only the last
  moments (replays ignore rows already written, so a copy whose write did end is harmless);
- closing: what cannot be written (a stalled store) is spooled instead of waited for; items submitted after
  closing are spooled at once; at interpreter exit without `close` (a forced quit) the buffer is spooled.

A row the store refuses on its own (while the rows around it are written) is set aside in a `rejected-` file and
counted as failed, so it cannot hold back the others. An unreadable spool line (a crash in mid-write) is skipped
and counted as dropped. Only a crash (SIGKILL, power loss) loses rows uncounted: those only in memory, i.e. the
last `interval_s` and the batch being written, or during a stall the last `stall_s / 4` (usage records submitted
with `submit_durable` are in the journal as well, so a crash of the process loses none of them).

When a batch is written: when the queue holds `flush_items` items, its oldest item is `interval_s` old, or no
item has arrived for `quiet_interval_s`, whichever comes first (and at once on `flush`/`close`). So the batch
adapts to the traffic: under load it fills in well under `interval_s` (at 2,000 requests a second with capture,
512 items take ~130 ms); under steady light traffic the writer gathers for up to `interval_s` (default 1 s)
instead of paying a transaction, the rollup upserts and their WAL pages for every few requests (at 45 requests
a second, 0.25 s batches cost the writer ~0.13 ms of CPU a request); and when the traffic pauses (a lone request,
the end of a replay) what is queued is in the store `quiet_interval_s` (0.05 s) after the last item, so readers
that look right after their requests (`dataset build`, `insource usage`, tests) see all of them. After
`SUSTAINED_S` of steady traffic the writer looks for that pause less and less often (2x each time, at most
`interval_s`), so a long stream's last items may wait up to `interval_s`.
Idle, the writer thread sleeps until an item
arrives (the producer wakes it when the queue stops being empty or reaches `flush_items`); its only timed
wake-ups are its own housekeeping (a pending journal rotation or fsync, a spool to replay) and the search for
dead workers' journals and spools every `adopt_every_s`. The stall guard sleeps while nothing is being written.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insource.errors import ConfigError
from insource.store.capture_queries import captured_ids
from insource.store.journal import CAPTURE_PENDING, FSYNC_EVERY_S, Journal, decode_journal, journal_line
from insource.store.spool import Spool, decode
from insource.store.sqlite import Row, Store

log = logging.getLogger("insource.store")

WriteItem = tuple[str, Row, bool]  # table, row, ignore duplicates
Deferred = Callable[[], list[WriteItem]]
_LIVE: weakref.WeakSet[BatchWriter] = weakref.WeakSet()
SUSTAINED_S = 0.1  # a batch gathering items for this long is steady traffic: its looks for a pause back off


@dataclass
class WriterStats:
    submitted: int = 0  # items: a usage row, or a deferred capture (which becomes several rows)
    written: int = 0  # rows, as are all the counts below
    spooled: int = 0
    replayed: int = 0
    failed: int = 0
    dropped: int = 0
    journal_replayed: int = 0  # records of a dead worker's journal written (or found already written)
    captures_lost: int = 0  # captures of journaled records a killed worker never wrote (not journaled)
    errors: list[str] = field(default_factory=list)


def _store_down(exc: BaseException) -> bool:
    """The store cannot take anything now (locked, unreachable): unlike a row it refuses, this passes."""
    return isinstance(exc, ConfigError | OSError) or type(exc).__name__ == "OperationalError"


class BatchWriter:
    _quiet_looks = 0  # looks for a pause in the current sustained batch (reset when the queue stops being empty)

    def __init__(
        self,
        store: Store,
        spool_dir: Path,
        *,
        max_queue: int = 50_000,
        batch_size: int = 1000,
        interval_s: float = 1.0,
        quiet_interval_s: float = 0.05,
        flush_items: int = 512,
        stall_s: float = 1.0,
        replay_every_s: float = 1.0,
        adopt_every_s: float = 5.0,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval_s = interval_s  # the longest an item waits in the queue while traffic keeps arriving
        self.quiet_interval_s = quiet_interval_s  # a batch is due once no item arrived for this long
        self.flush_items = flush_items  # a batch is due at once when the queue holds this many items
        self.stall_s = stall_s
        self.replay_every_s = replay_every_s
        self.adopt_every_s = adopt_every_s
        self.stats = WriterStats()
        self._spool = Spool(spool_dir)
        self.journal = journal
        self._submit_lock = threading.Lock()  # a journal line and its queue entry go in together
        self._guard_lock = threading.Lock()  # held while the guard moves items it took to the spool
        self._appended = 0  # items ever put in the queue
        self._popped = 0  # items ever taken from it
        self._journal_boundary: int | None = None  # the closed segments' items are the first N appended
        self._journal_rotate_due = 0.0
        self._queue: deque[WriteItem | Deferred] = deque()
        self._cond = threading.Condition()
        self._first_at = 0.0  # monotonic time the queue last stopped being empty (its oldest item's age)
        self._last_at = 0.0  # monotonic time the newest item was queued
        self._prompt_due = float("inf")  # a `prompt` row is queued: its batch is due then
        self._urgent = False  # a flush or close waits: write what is queued now
        self._housekeeping_at = 0.0  # monotonic time of the writer's next timed chore (replay, rotate, fsync, adopt)
        self._spool_pending = True  # this writer may have spooled rows to replay (checked at start)
        self._sync_due = 0.0  # the journal's next fsync (`fsync = "batch"`: at most every FSYNC_EVERY_S)
        self._writing = threading.Event()  # set while a store write is in progress (the guard watches only then)
        self._stats_lock = threading.Lock()
        self._busy = True  # until the start-up replay is done
        self._stop = False
        self._closed = False
        self._released = False
        self._write_started: float | None = None  # monotonic start of the store write in progress
        self._inflight: list[WriteItem] = []  # the batch being built or written
        self._inflight_on_disk = False  # a copy of it was spooled (the store stalled)
        self._replay_due = 0.0
        self._adopt_due = 0.0
        self._guard_stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="insource-writer", daemon=True)
        self._guard = threading.Thread(target=self._guard_run, name="insource-writer-guard", daemon=True)
        _LIVE.add(self)
        self._thread.start()
        self._guard.start()

    # -- producer side (hot path) -------------------------------------------------------------
    def submit(self, table: str, row: Row, *, ignore: bool = False, prompt: bool = False) -> None:
        """Queue a row. `prompt`: a row something reads back to decide (a route's calibration samples and audits):
        its batch is due `quiet_interval_s` after it, even while traffic keeps arriving."""
        self._put((table, row, ignore), prompt=prompt)

    def submit_fn(self, fn: Deferred) -> None:
        self._put(fn)

    def submit_durable(self, table: str, row: Row, *, capture: Deferred | None = None) -> None:
        """Like `submit`, but on disk (the journal: one `write`) before this returns, so a SIGKILL of the worker
        right after the answer leaves cannot lose the record. `capture`: the rows of its capture, queued with it
        (not journaled: its line says one follows, so a replay counts it as lost when it never reached the store;
        queued together, a journal segment is never deleted before the capture of one of its records is written)."""
        line = None if self.journal is None else journal_line(table, row, CAPTURE_PENDING if capture else 0)
        self._put((table, row, False), line, capture)

    def _put(
        self, item: WriteItem | Deferred, line: bytes | None = None, then: Deferred | None = None, prompt: bool = False
    ) -> None:
        self.stats.submitted += 1 if then is None else 2
        if self._closed:  # e.g. a request finished during shutdown: straight to disk
            self._spool_items([item] if then is None else [item, then])
            if self._released:
                self._spool.release()  # the file is any writer's to replay at once
            return
        if len(self._queue) >= self.max_queue:
            self._spool_items([item] if then is None else [item, then])
            return
        queue = self._queue
        with self._submit_lock:  # the journal's rotation reads the count of items queued with their lines
            if line is not None and self.journal is not None:
                self.journal.append(line)
            before = len(queue)
            queue.append(item)
            self._appended += 1
            self._last_at = now = time.monotonic()
            if prompt:
                self._prompt_due = min(self._prompt_due, now + self.quiet_interval_s)
            if then is not None:
                queue.append(then)
                self._appended += 1
        if not before or before < self.flush_items <= len(queue):  # the writer sleeps until told
            with self._cond:
                if not before:
                    self._first_at = time.monotonic()
                    self._quiet_looks = 0
                self._cond.notify()

    # -- spooling ------------------------------------------------------------------------------
    def _count(self, name: str, n: int) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def _spool_items(self, items: list[WriteItem | Deferred]) -> None:
        rows: list[WriteItem] = []
        for item in items:
            rows.extend(self._run_deferred(item) if callable(item) else [item])
        self._spool_rows(rows)

    def _spool_rows(self, rows: list[WriteItem]) -> None:
        self._spool_pending = True  # replayed by this writer within replay_every_s
        try:
            self._spool.append(rows)
            self._count("spooled", len(rows))
            return
        except (TypeError, ValueError):  # a row JSON cannot hold: spool the others one by one
            pass
        except OSError as exc:
            self._count("dropped", len(rows))
            self._note_error(f"could not spool {len(rows)} rows: {exc}")
            log.error("writer: could not spool %d rows (%s); counted as dropped", len(rows), exc)
            return
        for row in rows:
            try:
                self._spool.append([row])
                self._count("spooled", 1)
            except (OSError, TypeError, ValueError) as exc:
                self._count("dropped", 1)
                log.error("writer: could not spool a record (%s); counted as dropped", type(exc).__name__)

    def _take(self, limit: int) -> list[WriteItem | Deferred]:
        queue = self._queue
        with self._submit_lock:  # a producer sees the queue empty (and wakes the writer) exactly when it is
            if len(queue) <= limit:
                items = list(queue)
                queue.clear()
                self._prompt_due = float("inf")
            else:
                items = [queue.popleft() for _ in range(limit)]
        with self._stats_lock:
            self._popped += len(items)
        return items

    def _spool_inflight(self) -> None:
        """Put a copy of the batch being written on disk (once): if the write never ends, the copy is replayed;
        if it ends, the replay ignores the rows it finds already written."""
        if self._inflight_on_disk or not self._inflight:
            return
        self._inflight_on_disk = True
        rows = list(self._inflight)
        log.warning("writer: the store stalls; spooling a copy of the %d rows being written", len(rows))
        self._spool_rows(rows)

    def _spool_queue(self) -> None:
        """Move the buffer to disk (the guard, while the store stalls; and closing)."""
        while items := self._take(self.batch_size):
            self._spool_items(items)

    # -- the guard: a stalled store must not keep rows only in memory --------------------------
    def _stalled(self) -> bool:
        started = self._write_started
        return started is not None and time.monotonic() - started >= self.stall_s

    def _guard_run(self) -> None:
        while True:
            self._writing.wait()  # nothing is written: nothing can stall (no wake-ups while idle)
            if self._guard_stop.wait(max(self.stall_s / 4, 0.01)):
                return
            try:
                if self._stalled():
                    with self._guard_lock:
                        self._spool_inflight()
                        self._spool_queue()
            except Exception as exc:  # the guard must outlive any error; counted where it happened
                self._note_error(f"guard: {type(exc).__name__}: {exc}")
                log.exception("writer guard failed")

    # -- consumer side -----------------------------------------------------------------------
    def _run(self) -> None:
        self._step(drain=True)  # first of all, replay what earlier writers left behind
        while True:
            with self._cond:
                while True:
                    if self._stop and not self._queue:
                        return
                    now = time.monotonic()
                    drain = self._batch_due(now)
                    if drain or now >= self._housekeeping_at:
                        break
                    self._cond.wait(self._sleep_s(now))
                self._urgent = False
                self._busy = True
            self._step(drain=drain)

    def _batch_due(self, now: float) -> bool:
        """The queue's batch is to be written now (called holding the condition)."""
        if not self._queue:
            return False
        return (
            self._stop
            or self._urgent
            or len(self._queue) >= self.flush_items
            or now - self._first_at >= self.interval_s
            or now - self._last_at >= self.quiet_interval_s
            or now >= self._prompt_due
        )

    def _sleep_s(self, now: float) -> float | None:
        """How long the writer may sleep: until its batch or its next chore is due; None: until woken. While items
        keep arriving it wakes to see whether the traffic paused (`_next_quiet_look`)."""
        due = self._housekeeping_at
        if self._queue:
            due = min(due, self._first_at + self.interval_s, self._next_quiet_look(), self._prompt_due)
        return None if due == float("inf") else max(due - now, 0.001)

    def _next_quiet_look(self) -> float:
        """When to look again whether the traffic paused: `quiet_interval_s` after the newest item while the batch
        is young; once items have kept arriving for `SUSTAINED_S`, each look waits twice as long as the one before
        (capped at `interval_s`). A steady trickle (45 requests a second) otherwise woke the writer every 30-50 ms,
        about 70 µs of CPU each (~30 µs a request); a burst shorter than `SUSTAINED_S` is in the store
        `quiet_interval_s` after its last item as before, and nothing waits longer than `interval_s`."""
        wait = self.quiet_interval_s
        if self._last_at - self._first_at >= SUSTAINED_S:
            wait = min(wait * 2**self._quiet_looks, self.interval_s)
            self._quiet_looks += 1
        return self._last_at + wait

    def _step(self, *, drain: bool) -> None:
        try:
            if drain:
                self._drain()
            self._journal_step()
            self._replay()
        except Exception as exc:  # the writer thread must never die: it is the only one writing
            self._note_error(f"writer: {type(exc).__name__}: {exc}")
            log.exception("writer: unexpected error")
            time.sleep(min(self.interval_s, 1.0))
        finally:
            with self._cond:
                self._busy = False
                self._housekeeping_at = self._next_chore()
                self._cond.notify_all()

    def _next_chore(self) -> float:
        """When the writer must wake up with nothing queued: dead workers' files to look for, its own spool to
        replay, the journal's segment to rotate or fsync. Called holding the condition, after a step."""
        due = self._adopt_due
        if self._spool_pending:
            due = min(due, self._replay_due)
        journal = self.journal
        if journal is not None and self._journal_boundary is None and journal.rotate_due(force=True):
            due = min(due, self._journal_rotate_due)
        if journal is not None and journal.needs_sync():
            due = min(due, self._sync_due)
        return due

    def _drain(self) -> None:
        while self._queue:
            batch = self._inflight = []
            self._inflight_on_disk = False
            for item in self._take(self.batch_size):
                batch.extend(self._run_deferred(item) if callable(item) else [item])
            self._write(batch)
            self._inflight = []

    def _run_deferred(self, fn: Deferred) -> list[WriteItem]:
        try:
            return fn()
        except Exception as exc:  # a bug in a producer must not kill the writer; it is counted
            self._count("failed", 1)
            self._note_error(f"deferred record failed: {type(exc).__name__}: {exc}")
            log.exception("writer: a deferred record failed")
            return []

    def _store_write(self, rows: list[WriteItem]) -> None:
        self._write_started = time.monotonic()
        self._writing.set()
        try:
            self.store.write_batch(rows)
        finally:
            self._write_started = None
            self._writing.clear()

    def _write(self, batch: list[WriteItem]) -> None:
        if not batch:
            return
        try:
            self._store_write(batch)
            self._count("written", len(batch))
        except Exception as exc:  # database trouble: keep the rows on disk instead of losing them
            self._note_error(f"batch write failed: {type(exc).__name__}: {exc}")
            log.error("writer: batch write failed (%s); spooling %d rows", exc, len(batch))
            if not self._inflight_on_disk:  # else the guard spooled it already
                self._spool_rows(batch)

    def _note_error(self, text: str) -> None:
        self.stats.errors = [*self.stats.errors[-9:], text]

    # -- the journal -------------------------------------------------------------------------
    def _journal_step(self) -> None:
        """Delete closed journal segments once all their records are written or spooled; rotate the active one
        (every second, or when large; closing it fsyncs it); fsync the active one when configured, at most every
        FSYNC_EVERY_S (off the request path)."""
        journal = self.journal
        if journal is None:
            return
        self._drop_committed(journal)
        now = time.monotonic()
        if self._journal_boundary is None and journal.rotate_due(force=now >= self._journal_rotate_due):
            with self._submit_lock:
                old = journal.detach()
                self._journal_boundary = self._appended
            journal.close_segment(old)
            self._journal_rotate_due = now + 1.0
            self._sync_due = now + FSYNC_EVERY_S  # what the active segment holds is younger than that
            self._drop_committed(journal)  # its records were written before this step: delete it now
        if now >= self._sync_due and journal.needs_sync():
            journal.sync()
            self._sync_due = now + FSYNC_EVERY_S

    def _drop_committed(self, journal: Journal) -> None:
        boundary = self._journal_boundary
        if boundary is not None:
            with self._guard_lock:  # items the guard took are on disk once it lets go
                if self._popped >= boundary:
                    journal.drop_closed()
                    self._journal_boundary = None

    def _adopt_journals(self) -> bool:
        """Replay the journals of workers that are gone. False when the store is down."""
        journal = self.journal
        if journal is None:
            return True
        for owner in journal.gone_owners():
            with journal.adopt(owner) as files:
                for file in files:
                    if not self._replay_journal(file):
                        return False
        return True

    def _replay_journal(self, file: Path) -> bool:
        try:
            lines, bad = decode_journal(file.read_bytes())
        except FileNotFoundError:
            return True
        rows: list[WriteItem] = [(t, r, True) for t, r, _i, _f in lines]
        for start in range(0, len(rows), self.batch_size):
            if not self._replay_rows(rows[start : start + self.batch_size]):
                return False
        pending = {str(r.get("id")) for _t, r, _i, f in lines if f & CAPTURE_PENDING}
        if pending:
            lost = len(pending - captured_ids(self.store, pending))
            if lost:
                self._count("captures_lost", lost)
                log.error("writer: %d captures of a killed worker were never written; counted as lost", lost)
        if bad:
            self._count("dropped", bad)
            self._note_error(f"{bad} unreadable lines in {file.name}")
            log.error("writer: %d unreadable journal lines in %s; skipped, counted as dropped", bad, file.name)
        self._count("journal_replayed", len(rows))
        file.unlink(missing_ok=True)
        return True

    # -- replay ------------------------------------------------------------------------------
    def _replay(self) -> None:
        now = time.monotonic()
        if now >= self._replay_due and self._spool_pending:
            self._replay_due = now + self.replay_every_s
            self._spool_pending = False
            for file in self._spool.rotate():
                if not self._replay_file(file):
                    self._spool_pending = True  # the store is down: try again in replay_every_s
                    break
        if now >= self._adopt_due:
            self._adopt_due = now + self.adopt_every_s
            if self._adopt_journals():
                self._adopt()

    def _adopt(self) -> None:
        """Replay the files of writers that are gone (crashed, killed, or closed with rows left)."""
        for owner in self._spool.gone_owners():
            with self._spool.adopt(owner) as files:
                for file in files:
                    if not self._replay_file(file):
                        return

    def _replay_file(self, file: Path) -> bool:
        """Write one spool file's rows (duplicates ignored) and delete it. False when the store is down."""
        try:
            rows, bad = decode(file.read_bytes())
        except FileNotFoundError:
            return True
        for start in range(0, len(rows), self.batch_size):
            if not self._replay_rows(rows[start : start + self.batch_size]):
                return False
        if bad:
            self._count("dropped", bad)
            self._note_error(f"{bad} unreadable lines in {file.name}")
            log.error("writer: %d unreadable lines in %s (a crash in mid-write); counted as dropped", bad, file.name)
        self._count("replayed", len(rows))
        file.unlink(missing_ok=True)
        return True

    def _replay_rows(self, rows: list[WriteItem]) -> bool:
        try:
            self._store_write(rows)
            return True
        except Exception as exc:
            if _store_down(exc):
                self._note_error(f"spool replay failed: {type(exc).__name__}: {exc}")
                return False
        return self._replay_one_by_one(rows)

    def _replay_one_by_one(self, rows: list[WriteItem]) -> bool:
        """A batch the store refused: write its rows singly and set aside the ones it refuses (when it took
        others: refusing them all is the store's trouble, not the rows')."""
        rejected: list[WriteItem] = []
        for row in rows:
            try:
                self._store_write([row])
            except Exception as exc:
                if _store_down(exc):
                    return False
                rejected.append(row)
                self._note_error(f"row refused by the store: {type(exc).__name__}: {exc}")
        if len(rejected) > 1 and len(rejected) == len(rows):
            return False
        if rejected:
            self._count("failed", len(rejected))
            log.error("writer: the store refused %d spooled rows; kept in a rejected- file", len(rejected))
            self._spool.append_rejected(rejected)
        return True

    # -- control -----------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (or spooled). True when drained."""
        return self._wait_drained(time.monotonic() + timeout, give_up_on_stall=False)

    def _wait_drained(self, deadline: float, *, give_up_on_stall: bool) -> bool:
        with self._cond:
            while self._queue or self._busy:
                self._urgent = True  # the queue's batch is due now, whatever its age
                self._cond.notify_all()
                if time.monotonic() >= deadline or (give_up_on_stall and self._stalled()):
                    return False
                self._cond.wait(0.05)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued; when the store stalls or time runs out, spool the rest instead. Never drops."""
        self._closed = True
        drained = self._wait_drained(time.monotonic() + timeout, give_up_on_stall=True)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if not drained:
            self._abandon()
        self._thread.join(timeout if drained else min(timeout, 1.0))
        self._guard_stop.set()
        self._writing.set()  # wakes the guard to see it must stop
        self._guard.join(1.0)
        if self.journal is not None:  # drained: every record is in the store or the spool
            self.journal.close(committed=drained)
        self._spool.release()
        self._released = True
        _LIVE.discard(self)

    def _abandon(self) -> None:
        """The store is stalled: a copy of the batch being written, and the queue, go to disk."""
        self._spool_inflight()
        self._spool_queue()

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
            "journal_replayed": s.journal_replayed,
            "journal_lost": self.journal.lost if self.journal is not None else 0,
            "captures_lost": s.captures_lost,
            "stalled": self._stalled(),
            "errors": list(s.errors),
        }


@atexit.register
def _spool_at_exit() -> None:
    """A forced quit skips `close`: what is still queued goes to disk rather than vanishing with the process."""
    for writer in list(_LIVE):
        if not writer._closed:
            writer._closed = True
            writer._abandon()
