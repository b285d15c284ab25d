"""The usage journal on its own: replay of a dead worker's segments, corrupt lines, a full disk, rotation, and
captures a killed worker never wrote (counted, never silent). The SIGKILL tests through a real `insource serve`
are in test_journal_crash.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.conftest import UPSTREAM_KEY
from tests.test_durability import _config

from insource.config import load_config
from insource.service.chat import chat_completion
from insource.service.keys import KeyInfo
from insource.service.request import StreamReply
from insource.service.worker_state import WorkerState
from insource.store.journal import CAPTURE_PENDING, Journal
from insource.store.sqlite import Store
from insource.store.writer import BatchWriter
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle


def _usage(i: int) -> dict[str, Any]:
    return {"id": f"req_{i}", "ts": 1.0, "tenant": "t", "key_id": "k", "endpoint": "chat", "status": 200}


def _line(i: int, flags: int = 0) -> bytes:
    return orjson.dumps(["usage", _usage(i), True, flags]) + b"\n"


def _ids(store: Store) -> list[str]:
    return [r["id"] for r in store.query("SELECT id FROM usage ORDER BY id")]


def _writer(store: Store, tmp_path: Path, **kw: Any) -> BatchWriter:
    return BatchWriter(store, tmp_path / "spool", journal=Journal(tmp_path / "journal", **kw))


def test_a_dead_workers_journal_is_replayed_once_and_a_corrupt_line_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "journal-dead.1.jsonl").write_bytes(_line(1) + b'["usage",{"id":"req_x", garbage\n' + _line(2))
    (folder / "journal-dead.2.jsonl").write_bytes(_line(3) + _line(4)[:20])  # killed in mid-write
    store.write_batch([("usage", _usage(2), False)])  # reached the store before the kill
    writer = _writer(store, tmp_path)
    writer.close(timeout=5)
    assert _ids(store) == ["req_1", "req_2", "req_3"]
    report = writer.report()
    assert report["journal_replayed"] == 3 and report["dropped"] == 2
    assert list(folder.glob("journal-dead*")) == []


def test_a_live_workers_journal_is_left_to_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    live = _writer(store, tmp_path)
    live.submit_durable("usage", _usage(1))
    assert live.journal is not None
    segment = next((tmp_path / "journal").glob(f"journal-{live.journal.owner}.*.jsonl"))
    other = _writer(store, tmp_path)
    other.flush(5)
    assert segment.exists() or _ids(store) == ["req_1"]  # never adopted while its owner holds the lock
    assert other.report()["journal_replayed"] == 0
    other.close(timeout=5)
    live.close(timeout=5)
    assert _ids(store) == ["req_1"]


def test_journal_segments_are_deleted_once_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    writer = _writer(store, tmp_path, fsync="off")
    for i in range(300):
        writer.submit_durable("usage", _usage(i))
    deadline = time.monotonic() + 5
    folder = tmp_path / "journal"
    while time.monotonic() < deadline and list(folder.glob("*.jsonl")):
        time.sleep(0.1)  # rotated after a second, deleted once its rows are written
    assert list(folder.glob("*.jsonl")) == []
    assert len(_ids(store)) == 300
    writer.submit_durable("usage", _usage(999))
    writer.close(timeout=5)
    assert list(folder.iterdir()) == []  # a clean close leaves nothing behind
    assert len(_ids(store)) == 301


def test_a_full_disk_still_answers_and_counts_the_loss(tmp_path: Path) -> None:
    """The journal's segment is /dev/full: every write fails with ENOSPC, as on a full disk."""
    store = Store(tmp_path / "s.db")
    journal = Journal(tmp_path / "journal")
    (tmp_path / "journal").mkdir()
    os.symlink("/dev/full", tmp_path / "journal" / f"journal-{journal.owner}.1.jsonl")
    writer = BatchWriter(store, tmp_path / "spool", journal=journal)
    writer.submit_durable("usage", _usage(1))
    writer.close(timeout=5)
    assert _ids(store) == ["req_1"]  # the record still reached the store through the writer
    assert writer.report()["journal_lost"] == 1


def test_a_capture_a_killed_worker_never_wrote_is_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "journal-dead.1.jsonl").write_bytes(_line(1, CAPTURE_PENDING) + _line(2))
    writer = _writer(store, tmp_path)
    writer.close(timeout=5)
    assert writer.report()["captures_lost"] == 1


def test_sigkill_right_after_submit_loses_nothing(tmp_path: Path) -> None:
    """A process journals records and is killed before its writer could write them; the next writer does."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from insource.store.journal import Journal
        from insource.store.sqlite import Store
        from insource.store.writer import BatchWriter
        store = Store(Path({str(tmp_path / "s.db")!r}))
        w = BatchWriter(store, Path({str(tmp_path / "spool")!r}), journal=Journal(Path({str(tmp_path / "journal")!r})),
                        interval_s=60)
        w.flush(5)
        for i in range(500):
            w.submit_durable("usage", {{"id": f"req_{{i}}", "ts": 1.0, "tenant": "t", "key_id": "k",
                                        "endpoint": "chat", "status": 200}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == -9
    store = Store(tmp_path / "s.db")
    assert len(_ids(store)) < 500  # the writer had not written them all
    _writer(store, tmp_path).close(timeout=5)
    assert len(_ids(store)) == 500


def test_a_streams_record_is_journaled_before_its_done_event_leaves(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that received `data: [DONE]` has its whole answer (the SDK stops there): a SIGKILL at that moment
    must not lose the record. The relay is driven as the server drives it, and the event carrying [DONE] must find
    the record on disk already (in the journal, or committed)."""
    monkeypatch.setenv("LOCAL_UPSTREAM_KEY", UPSTREAM_KEY)
    cfg = load_config(_config(tmp_path, upstream[1].url))
    key = KeyInfo("key_1", "acme", None, None, None, None, None, False)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True})

    def on_disk(rid: str) -> bool:
        journaled = b"".join(p.read_bytes() for p in (tmp_path / "journal").glob("journal-*.jsonl"))
        return rid.encode() in journaled or bool(gw.store.query("SELECT id FROM usage WHERE id = ?", (rid,)))

    async def drive() -> list[bool]:
        await gw.start()
        seen = []
        try:
            for n in range(3):
                reply = await chat_completion(gw, key, body, None, request_id=f"req_done_{n}")
                assert isinstance(reply, StreamReply)
                async for event in reply.events:
                    if b"[DONE]" in event:
                        seen.append(on_disk(f"req_done_{n}"))
        finally:
            await gw.stop()
        return seen

    gw = WorkerState(cfg)
    assert asyncio.run(drive()) == [True, True, True]
