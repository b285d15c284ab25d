"""Store: migrations are ordered and idempotent; the writer batches, flushes and spools instead of dropping."""

from __future__ import annotations

import threading
from pathlib import Path

from insource.store.migrations import MIGRATIONS
from insource.store.sqlite import Store
from insource.store.writer import BatchWriter


def test_migrations_apply_once_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    names = [r["name"] for r in store.query("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [name for name, _ in MIGRATIONS]
    assert Store(tmp_path / "s.db").migrate() == []


def test_concurrent_openers_migrate_safely(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            Store(tmp_path / "c.db")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _meta_row(i: int) -> dict[str, str]:
    return {"key": f"k{i}", "value": str(i)}


def test_writer_flushes_everything_on_close(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    writer = BatchWriter(store, tmp_path / "spool")
    for i in range(5000):
        writer.submit("meta", _meta_row(i))
    writer.submit_fn(lambda: [("meta", {"key": "deferred", "value": "yes"}, False)])
    writer.close()
    assert store.query_one("SELECT COUNT(*) AS n FROM meta")["n"] == 5001  # type: ignore[index]
    assert writer.report()["dropped"] == 0


def test_writer_spools_overflow_and_replays(tmp_path: Path) -> None:
    store = Store(tmp_path / "o.db")
    writer = BatchWriter(store, tmp_path / "spool", max_queue=10, batch_size=10)
    with writer._cond:  # hold the writer so the queue overflows
        for i in range(100):
            writer.submit("meta", _meta_row(i))
    assert writer.report()["spooled"] > 0
    writer.close()
    restarted = BatchWriter(store, tmp_path / "spool")  # replays what was spooled
    restarted.close()
    assert store.query_one("SELECT COUNT(*) AS n FROM meta")["n"] == 100  # type: ignore[index]
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


def test_failed_batch_is_spooled_not_lost(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    writer = BatchWriter(store, tmp_path / "spool")
    writer.submit("meta", _meta_row(1))
    writer.submit("meta", _meta_row(1))  # duplicate primary key: the batch fails as a whole
    writer.close()
    assert writer.report()["spooled"] == 2
    BatchWriter(store, tmp_path / "spool").close()  # replay with INSERT OR IGNORE
    assert store.query_one("SELECT COUNT(*) AS n FROM meta")["n"] == 1  # type: ignore[index]
