"""The writer's cadence: it sleeps while idle, gathers a trickle of records into few batches (each within
`interval_s` of its oldest record), writes at once on `flush`, and fsyncs the journal on a time cadence rather
than once per batch (issue 15: the fixed cost of a batch was ~0.4 ms CPU for every request or two at low rates)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from insource.store.journal import Journal
from insource.store.sqlite import Store
from insource.store.writer import BatchWriter


def _usage(i: int) -> dict[str, Any]:
    return {"id": f"req_{i}", "ts": 1.0, "tenant": "t", "key_id": "k", "endpoint": "chat", "status": 200}


class _CountingStore(Store):
    """A real SQLite store that counts its write transactions."""

    batches = 0

    def write_batch(self, batch: Any) -> None:
        self.batches += 1
        super().write_batch(batch)


def _ids(store: Store) -> set[str]:
    return {r["id"] for r in store.query("SELECT id FROM usage")}


def _writer(store: Store, tmp_path: Path, **kw: Any) -> BatchWriter:
    return BatchWriter(store, tmp_path / "spool", journal=Journal(tmp_path / "journal"), **kw)


def test_an_idle_writer_does_not_wake_up(tmp_path: Path) -> None:
    """Old code: the writer thread woke every 50 ms (20 steps a second) with nothing to do."""
    writer = _writer(Store(tmp_path / "s.db"), tmp_path)
    steps: list[float] = []
    step = writer._step

    def counted(*args: Any, **kw: Any) -> None:
        steps.append(time.monotonic())
        step(*args, **kw)

    writer._step = counted  # type: ignore[method-assign]
    writer.submit_durable("usage", _usage(1))
    assert writer.flush(5)
    time.sleep(1.5)  # the journal's rotation (within a second) is the last chore
    steps.clear()
    time.sleep(1.5)
    assert len(steps) <= 1, f"{len(steps)} wake-ups in 1.5 s idle"
    writer.close(timeout=5)
    assert _ids(writer.store) == {"req_1"}


def test_a_trickle_is_gathered_and_reaches_the_store_when_it_pauses(tmp_path: Path) -> None:
    """20 records 15 ms apart: old code wrote a batch every 50 ms (~6); the writer gathers while records keep
    arriving and writes once they pause for `quiet_interval_s` (0.05 s): all 20 are in the store promptly after
    the last, in one or two batches."""
    store = _CountingStore(tmp_path / "s.db")
    writer = _writer(store, tmp_path)
    assert writer.flush(5)
    start = store.batches
    for i in range(20):
        writer.submit_durable("usage", _usage(i))
        time.sleep(0.015)
    submitted = time.monotonic()
    deadline = submitted + 5
    while len(_ids(store)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_ids(store)) == 20
    assert time.monotonic() - submitted <= writer.quiet_interval_s + 1.0  # 1 s of slack on a loaded machine
    assert store.batches - start <= 3, f"{store.batches - start} batches for 20 records"
    assert (writer.interval_s, writer.quiet_interval_s) == (1.0, 0.05)  # the documented defaults
    writer.close(timeout=5)


def test_steady_traffic_is_written_at_least_every_interval(tmp_path: Path) -> None:
    """Records that never pause (every 20 ms for 0.8 s, `interval_s` 0.3 s here) still reach the store within
    `interval_s` of arriving: the oldest record's age bounds the batch, not only a pause."""
    store = _CountingStore(tmp_path / "s.db")
    writer = _writer(store, tmp_path, interval_s=0.3)
    assert writer.flush(5)
    start = store.batches
    seen_during: list[int] = []
    began = time.monotonic()
    i = 0
    while time.monotonic() - began < 0.8:
        writer.submit_durable("usage", _usage(i))
        i += 1
        time.sleep(0.02)
        seen_during.append(len(_ids(store)))
    assert max(seen_during) > 0  # written while the records kept coming (before any pause)
    assert writer.flush(5)
    assert len(_ids(store)) == i
    assert 2 <= store.batches - start <= 6, f"{store.batches - start} batches in 0.8 s at interval 0.3 s"
    writer.close(timeout=5)


def test_a_steady_trickle_does_not_wake_the_writer_every_few_tens_of_ms(tmp_path: Path) -> None:
    """A record every 20 ms for 1.2 s (45 requests a second, one client): old code looked for a pause
    `quiet_interval_s` after every newest record, ~30 wake-ups a second of ~70 µs CPU each. Once the batch has
    gathered for `SUSTAINED_S` the looks back off; every record still reaches the store within `interval_s`."""
    store = _CountingStore(tmp_path / "s.db")
    writer = _writer(store, tmp_path)
    assert writer.flush(5)
    looks: list[float] = []
    sleep_s = writer._sleep_s

    def counted(now: float) -> float | None:
        looks.append(now)
        return sleep_s(now)

    writer._sleep_s = counted  # type: ignore[method-assign]
    start = store.batches
    began = time.monotonic()
    for i in range(60):
        writer.submit_durable("usage", _usage(i))
        time.sleep(0.02)
    during = [t for t in looks if t >= began]
    deadline = time.monotonic() + 5
    while len(_ids(store)) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    waited = time.monotonic() - began
    assert len(_ids(store)) == 60 and waited <= 1.2 + writer.interval_s + 1.0  # 1 s of slack on a loaded machine
    assert len(during) <= 20, f"{len(during)} wake-ups in 1.2 s of steady records (old code: ~32, now ~14)"
    assert 1 <= store.batches - start <= 4, f"{store.batches - start} batches"
    writer.close(timeout=5)


def test_a_full_batch_is_written_before_the_interval(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path / "s.db")
    writer = _writer(store, tmp_path, interval_s=30.0, flush_items=10)
    for i in range(10):
        writer.submit_durable("usage", _usage(i))
    deadline = time.monotonic() + 10
    while len(_ids(store)) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_ids(store)) == 10  # written for its size, not after 30 s
    writer.close(timeout=5)


def test_a_lone_record_after_a_quiet_spell_is_written_at_once(tmp_path: Path) -> None:
    """Readers that poll the store right after a request (tests, `insource usage`) see it as soon as before: the
    first record after a quiet spell waits `quiet_interval_s` (0.05 s), not `interval_s` (30 s here)."""
    store = Store(tmp_path / "s.db")
    writer = _writer(store, tmp_path, interval_s=30.0)
    assert writer.flush(5)
    writer.submit_durable("usage", _usage(1))
    deadline = time.monotonic() + 5
    while not _ids(store) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _ids(store) == {"req_1"}
    writer.close(timeout=5)


def test_flush_does_not_wait_for_the_interval(tmp_path: Path) -> None:
    """`flush` (spend, feedback, tests) writes what is queued at once, however young the batch."""
    store = Store(tmp_path / "s.db")
    writer = _writer(store, tmp_path, interval_s=30.0)
    assert writer.flush(5)
    writer.submit_durable("usage", _usage(1))
    started = time.monotonic()
    assert writer.flush(20)
    assert time.monotonic() - started < 5.0
    assert _ids(store) == {"req_1"}
    writer.close(timeout=5)


def test_the_journal_is_fsynced_on_a_time_cadence_not_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many small batches within a second: old code fsynced the journal after each (8 here); now at most once a
    second (the segment's close at rotation included), and never on the request path."""
    calls: list[float] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(time.monotonic())
        real(fd)

    store = _CountingStore(tmp_path / "s.db")
    writer = _writer(store, tmp_path, flush_items=1)
    assert writer.flush(5)
    monkeypatch.setattr(os, "fsync", counting)
    for i in range(8):
        writer.submit_durable("usage", _usage(i))
        assert writer.flush(5)  # one batch each
    elapsed = time.monotonic() - calls[0] if calls else 0.0
    assert len(calls) <= 2 + int(elapsed), f"{len(calls)} fsyncs for 8 batches in {elapsed:.2f} s"
    time.sleep(1.5)
    assert calls, "the journal is fsync'd within a second or so"
    writer.close(timeout=5)
    assert len(_ids(store)) == 8
