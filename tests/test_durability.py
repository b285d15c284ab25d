"""Nothing lost: every answered request keeps its usage record through store stalls, shutdowns and crashes.

The writer (`store/writer.py`, `store/spool.py`) on its own first, then a real `insource serve` stopped or killed
while another process holds the SQLite store locked, and requests cancelled or abandoned before an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, start_gateway, stop_gateway

from insource.config import load_config
from insource.server.app import create_app
from insource.service.keys import create_key, server_secret
from insource.store import open_store
from insource.store.sqlite import Store
from insource.store.writer import BatchWriter
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle

Row = tuple[str, dict[str, Any], bool]


def _meta(i: int) -> dict[str, Any]:
    return {"key": f"k{i}", "value": str(i)}


def _count(store: Store, table: str = "meta") -> int:
    row = store.query_one(f"SELECT COUNT(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


def _spooled_lines(folder: Path) -> list[Row]:
    rows: list[Row] = []
    for file in sorted(folder.glob("spool-*")):
        if file.suffix in (".jsonl", ".replaying"):
            rows += [tuple(orjson.loads(line)) for line in file.read_bytes().splitlines() if line.strip()]  # type: ignore[misc]
    return rows


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process's view: an exclusive SQLite transaction on the store, held for the block."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- the writer ---------------------------------------------------------------------------------------------------
def test_a_torn_spool_line_is_counted_and_the_writer_keeps_writing(tmp_path: Path) -> None:
    """A crash in mid-append leaves half a line: replay must skip and count it, not die on it."""
    store = Store(tmp_path / "s.db")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "spool-0a1b.jsonl").write_bytes(b'["meta",{"key":"whole","value":"1"},false]\n["meta",{"key":"ha')
    writer = BatchWriter(store, spool)
    writer.submit("meta", _meta(1))
    writer.close(timeout=3)
    assert store.query("SELECT key FROM meta ORDER BY key") == [{"key": "k1"}, {"key": "whole"}]
    assert writer.report()["dropped"] == 1 and writer.report()["replayed"] == 1
    assert _spooled_lines(spool) == []


def test_a_spool_file_left_in_mid_replay_is_replayed(tmp_path: Path) -> None:
    """A process stopped while replaying leaves `spool-X.replaying`: the next writer must write it, once."""
    store = Store(tmp_path / "s.db")
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = b"".join(orjson.dumps(["meta", _meta(i), False]) + b"\n" for i in range(20))
    (spool / "spool-5e6f.replaying").write_bytes(lines)
    store.write_batch([("meta", _meta(3), False)])  # part of it was written before the stop
    BatchWriter(store, spool).close(timeout=3)
    assert _count(store) == 20
    assert _spooled_lines(spool) == []


def test_a_stalled_store_moves_the_buffer_to_disk_and_close_does_not_wait(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    spool = tmp_path / "spool"
    writer = BatchWriter(store, spool)  # notices a stall after 1 s
    with locked(tmp_path / "s.db"):
        writer.submit("meta", _meta(0))
        time.sleep(0.2)  # its batch now waits on the lock (SQLite's busy timeout: 30 s)
        for i in range(1, 200):
            writer.submit("meta", _meta(i))
        # memory must not stay the only copy while the store stalls (a crash would lose it all)
        assert _wait(lambda: writer.pending() == 0 and len(_spooled_lines(spool)) == 200, 4), writer.report()
        started = time.monotonic()
        writer.close(timeout=20)
        assert time.monotonic() - started < 3  # the store's 30 s lock wait is not the shutdown's
    restarted = BatchWriter(store, spool)
    restarted.close(timeout=10)
    assert _count(store) == 200  # each once: the copy of the stalled batch is ignored when it was written too
    assert restarted.report()["replayed"] >= 200 and writer.report()["dropped"] == 0


def test_one_row_the_store_refuses_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """An integer SQLite cannot hold (JSON can): its batch fails, yet the rows around it must be written."""
    store = Store(tmp_path / "s.db")
    spool = tmp_path / "spool"
    writer = BatchWriter(store, spool)
    for i in range(10):
        writer.submit("meta", {"key": f"k{i}", "value": 2**63 if i == 5 else str(i)})
    assert _wait(lambda: _count(store) == 9, 5), writer.report()
    writer.close(timeout=3)
    assert writer.report()["failed"] == 1 and writer.report()["dropped"] == 0
    rejected = [orjson.loads(line) for f in spool.glob("rejected-*") for line in f.read_bytes().splitlines()]
    assert [r[1]["key"] for r in rejected] == ["k5"]  # kept for inspection, never replayed into the store


class _StoreDown:
    """A store that cannot write (the `write` hook decides how long the failure takes)."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.hold = hold
        self.entered = threading.Event()

    def write_batch(self, batch: Any) -> None:
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(10)
        raise sqlite3.OperationalError("database is locked")


def test_a_live_writers_spool_is_left_to_it(tmp_path: Path) -> None:
    """Two workers share the spool folder. One must never take the other's file while that one still appends
    to it: a failed replay used to rename the file back over rows appended meanwhile, losing them."""
    spool = tmp_path / "spool"
    a = BatchWriter(_StoreDown(), spool)  # type: ignore[arg-type]
    a.submit("meta", _meta(1))
    assert _wait(lambda: len(_spooled_lines(spool)) == 1, 3)
    hold = threading.Event()
    slow = _StoreDown(hold)
    b = BatchWriter(slow, spool)  # type: ignore[arg-type]
    slow.entered.wait(1.0)  # the old writer started replaying a's file here
    a.submit("meta", _meta(2))
    assert _wait(lambda: a.report()["spooled"] == 2, 3)
    hold.set()
    b.close(timeout=3)
    a.close(timeout=3)
    assert sorted(r[1]["key"] for r in _spooled_lines(spool)) == ["k1", "k2"]
    store = Store(tmp_path / "s.db")
    BatchWriter(store, spool).close(timeout=5)  # a and b are gone: their files are anyone's
    assert _count(store) == 2 and _spooled_lines(spool) == []


def test_an_exit_without_close_spools_the_buffer(tmp_path: Path) -> None:
    """A forced quit (Ctrl-C twice skips the app's shutdown): what is queued goes to disk, not with the process."""
    store = Store(tmp_path / "s.db")
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from insource.store.sqlite import Store
        from insource.store.writer import BatchWriter
        writer = BatchWriter(Store(Path({str(tmp_path / "s.db")!r})), Path({str(tmp_path / "spool")!r}))
        for i in range(50):
            writer.submit("meta", {{"key": f"k{{i}}", "value": "v"}})
        time.sleep(0.3)  # the batch waits on the lock; the writer would notice the stall only after 1 s
        sys.exit(0)
        """
    )
    with locked(tmp_path / "s.db"):
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    BatchWriter(store, tmp_path / "spool").close(timeout=5)
    assert _count(store) == 50


# -- the gateway --------------------------------------------------------------------------------------------------
def _config(folder: Path, up_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "insource.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///./insource.db"

[providers.local]
kind = "openai"
base_url = "{up_url}/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"
terms = "self-hosted"

[models."gpt-4o-mini"]
targets = ["local:gpt-4o-mini"]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}

[models."text-embedding-3-small"]
targets = ["local:text-embedding-3-small"]
free = true
"""
    )
    return config


ENV = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY}


def _traffic(gw: Gateway, key: str, n: int, prefix: str) -> list[str]:
    """n requests (chat, streamed chat, embeddings), each with its own task; returns the tasks answered 200."""
    answered = []
    with httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        for i in range(n):
            task = f"{prefix}-{i}"
            headers = {"X-Insource-Task": task}
            if i % 3 == 2:
                emb = {"model": "text-embedding-3-small", "input": task}
                resp = client.post("/embeddings", json=emb, headers=headers)
            else:
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": task}], "stream": i % 3 == 1}
                resp = client.post("/chat/completions", json=body, headers=headers)
            if resp.status_code == 200:
                answered.append(task)
    return answered


def _records(gw: Gateway, prefix: str, expected: int) -> list[dict[str, Any]]:
    return gw.usage_rows("task LIKE ?", (f"{prefix}-%",), wait_for=expected)


def _check_restart(config: Path, prefix: str, answered: list[str]) -> None:
    gw = start_gateway(config, ENV)
    try:
        rows = _records(gw, prefix, len(answered))
        assert sorted(r["task"] for r in rows) == sorted(answered)  # every answered request, each once
        assert len({r["id"] for r in rows}) == len(rows)
        chats = [t for t in answered if int(t.rsplit("-", 1)[1]) % 3 != 2]
        store = open_store(load_config(config))
        captured = store.query("SELECT task FROM captures WHERE task LIKE ?", (f"{prefix}-%",))
        store.close()
        assert sorted(r["task"] for r in captured) == sorted(chats)
    finally:
        stop_gateway(gw)


Upstream = tuple[FakeUpstream, ServerHandle]


def test_graceful_stop_with_a_locked_store_is_quick_and_loses_nothing(upstream: Upstream, tmp_path: Path) -> None:
    config = _config(tmp_path / "g", upstream[1].url)
    gw = start_gateway(config, ENV)
    key = gw.key("dur")["key"]
    with locked(tmp_path / "g" / "insource.db"):
        answered = _traffic(gw, key, 30, "stop")
        assert len(answered) == 30
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(20)
        assert time.monotonic() - started < 8  # it used to wait 60 s on the lock, then lose the records
    _check_restart(config, "stop", answered)


def test_a_crash_while_the_store_is_locked_loses_no_answered_request(upstream: Upstream, tmp_path: Path) -> None:
    config = _config(tmp_path / "k", upstream[1].url)
    gw = start_gateway(config, ENV)
    key = gw.key("dur")["key"]
    with locked(tmp_path / "k" / "insource.db"):
        answered = _traffic(gw, key, 30, "kill")
        time.sleep(2.5)  # the writer notices the stall within ~1 s and puts what it holds on disk
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
    _check_restart(config, "kill", answered)


def test_a_client_gone_before_its_body_is_metered(gateway: Gateway) -> None:
    created = gateway.key("gone")
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {created['key']}\r\nContent-Length: 400\r\n\r\n".encode()
            + b'{"model": "gpt-4o-mini", "mess'
        )
        time.sleep(0.2)
    rows = gateway.usage_rows("key_id = ?", (created["id"],), wait_for=1)
    assert [(r["status"], r["endpoint"]) for r in rows] == [(499, "chat")]


async def test_a_request_cancelled_before_its_answer_is_metered(
    fake: FakeUpstream, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn cancels requests still running when shutdown's grace period ends: each must keep its record."""
    config = _config(tmp_path / "c", upstream[1].url)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(config)
    store = open_store(cfg)
    created = create_key(store, server_secret(cfg, store), "cancel")
    store.close()
    fake.hang = True
    app = create_app(cfg)
    thresholds = gc.get_threshold()
    try:
        async with app.app.router.lifespan_context(app.app):
            gw = app.app.state.gateway
            auth = {"Authorization": f"Bearer {created['key']}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                calls = [
                    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}),
                    (
                        "/v1/chat/completions",
                        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "b"}], "stream": True},
                    ),
                    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "c"}),
                ]
                for n, (path, body) in enumerate(calls, 1):
                    call = asyncio.create_task(client.post(path, json=body, headers=auth))
                    assert await asyncio.to_thread(fake.wait_for_requests, n)
                    call.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await call
            assert await asyncio.to_thread(gw.writer.flush, 5.0)
            rows = gw.store.query("SELECT endpoint, status, error_code FROM usage WHERE key_id = ?", (created["id"],))
    finally:
        fake.release()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert sorted((r["endpoint"], r["status"], r["error_code"]) for r in rows) == [
        ("chat", 499, "cancelled"),
        ("chat", 499, "cancelled"),
        ("embeddings", 499, "cancelled"),
    ]
