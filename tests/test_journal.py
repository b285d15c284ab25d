"""The usage journal on its own: replay of a dead worker's segments, corrupt lines, a full disk, rotation, and
captures a killed worker never wrote (counted, never silent). The SIGKILL tests through a real `insource serve`
are in test_journal_crash.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, start_gateway, stop_gateway
from tests.test_durability import _config

from insource.config import load_config
from insource.service.chat import chat_completion
from insource.service.keys import KeyInfo
from insource.service.request import StreamReply
from insource.service.worker_state import WorkerState
from insource.store import open_store
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


def test_a_capture_is_queued_with_its_record(tmp_path: Path) -> None:
    """The record and its capture go in together (one lock): a journal rotation cannot fall between them, so the
    segment holding the record is never deleted while its capture is still only in memory."""
    store = Store(tmp_path / "s.db")
    writer = _writer(store, tmp_path)
    for i in range(50):
        writer.submit_durable(
            "usage", _usage(i), capture=lambda i=i: [("meta", {"key": f"cap{i}", "value": "x"}, False)]
        )
        if i == 25:
            writer.flush(5)
    writer.close(timeout=5)
    assert len(_ids(store)) == 50
    assert len(store.query("SELECT key FROM meta WHERE key LIKE 'cap%'")) == 50
    assert writer.report()["submitted"] == 100


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


# -- bad input through a real `insource serve` and the official SDK -------------------------------------------------
def _writer_metric(gw: Gateway, state: str) -> int:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if f'insource_writer_records{{state="{state}"}}' in ln)
    return int(line.rsplit(" ", 1)[1])


def _answer_both_ways(gw: Gateway, text: str) -> list[str]:
    """A plain and a streamed chat completion through the SDK; both must answer whole. Their request ids."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key("acme")["key"], max_retries=0)
    messages: Any = [{"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert raw.parse().choices[0].message.content
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    ) as resp:
        assert resp.status_code == 200 and "data: [DONE]" in list(resp.iter_lines())
        ids = [raw.headers["x-request-id"], resp.headers["x-request-id"]]
    client.close()
    return ids


def test_a_corrupt_journal_line_is_skipped_counted_and_the_rest_replayed(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    config = _config(tmp_path, upstream[1].url)
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "journal-deadbeef.1.jsonl").write_bytes(_line(1) + b"\x00\xff not json\n" + _line(2) + _line(3)[:30])
    gw = start_gateway(config, {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        assert _writer_metric(gw, "journal_replayed") == 2 and _writer_metric(gw, "dropped") == 2
        _answer_both_ways(gw, "after a corrupt journal")  # and it serves as usual
    finally:
        stop_gateway(gw)
    assert "2 unreadable journal lines" in gw.log.read_text()
    store = open_store(load_config(config))
    try:
        assert {"req_1", "req_2"} <= set(_ids(store))  # type: ignore[arg-type]
    finally:
        store.close()
    assert list(folder.glob("journal-deadbeef*")) == []


@pytest.fixture()
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A real file system with no space left: a 64 KiB tmpfs, filled. Needs mount (root, as in .ci/run)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_for_the_journal_answers_and_counts_the_loss(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path, full_fs: Path
) -> None:
    """The journal folder is on a full file system (ENOSPC on every write): requests still answer, each record
    still reaches the store through the writer, and the loss of its journal line is counted and logged."""
    config = _config(tmp_path, upstream[1].url)
    (tmp_path / "journal").symlink_to(full_fs)
    gw = start_gateway(config, {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        ids = _answer_both_ways(gw, "on a full disk") + _answer_both_ways(gw, "still on a full disk")
        assert _writer_metric(gw, "journal_lost") == 4
        assert len(gw.usage_rows("status = 200", wait_for=4)) == 4
    finally:
        stop_gateway(gw)
    assert "journal: could not append a record" in gw.log.read_text()
    assert {r["request_id"] for r in gw.usage_rows("status = 200")} == set(ids)
