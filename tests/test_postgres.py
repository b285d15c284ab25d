"""The PostgreSQL store: a real server started by the test, the gateway and the dataset builder on top."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import Gateway, free_port, start_gateway, stop_gateway

from insource.demo import data as demo_data
from insource.demo.teacher import SimulatedTeacher
from insource.store.postgres import PgStore, translate
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import run_server

INITDB = shutil.which("initdb")
pytestmark = pytest.mark.skipif(
    INITDB is None or importlib.util.find_spec("psycopg") is None or shutil.which("su") is None,
    reason="PostgreSQL server binaries or psycopg are not installed",
)


def _as_postgres(cmd: str) -> None:
    subprocess.run(["su", "postgres", "-c", cmd], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="insource-pg-"))
    data = folder / "data"
    shutil.chown(folder, "postgres")
    port = free_port()
    _as_postgres(f"initdb -D {data} -A trust --no-sync -U postgres")
    _as_postgres(f"pg_ctl -D {data} -l {folder}/log -w -o '-c listen_addresses=127.0.0.1 -p {port} -k {folder}' start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(f"pg_ctl -D {data} -m immediate stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_translate() -> None:
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    assert "to_char" in translate("SELECT strftime('%Y-%m-%d', ts, 'unixepoch') FROM usage")
    assert translate("CREATE TABLE x (a REAL, b BLOB)", ddl=True) == "CREATE TABLE x (a DOUBLE PRECISION, b TEXT)"


def test_store_migrates_writes_and_reads(pg_url: str) -> None:
    store = PgStore(pg_url)
    assert PgStore(pg_url).migrate() == []  # idempotent
    store.write_batch([("meta", {"key": "a", "value": "1"}, False), ("meta", {"key": "a", "value": "2"}, True)])
    assert store.meta_setdefault("a", "3") == "1"
    store.execute("DELETE FROM meta WHERE key = ?", ("a",))
    assert store.meta_get("a") is None


def test_tasks_count_outputs_trimmed_like_the_dataset_builder(pg_url: str) -> None:
    """SQL TRIM strips only spaces: "label\\n" and "label" must count once on PostgreSQL too (str.strip)."""
    from insource.capture.inspect import list_tasks
    from insource.capture.process import process_capture
    from insource.capture.record import CaptureRaw

    store = PgStore(pg_url)
    rows = []
    for i, out in enumerate(["refund", "refund\n", " refund\t", "card\r\n", "card", "\u00a0card"] * 4):
        raw = CaptureRaw(
            id=f"pg-trim-{i}", ts=1000.0 + i, tenant="t", key_id="k", task="pg-trim", model="m", provider="p",
            upstream_model="m", served_by="p:m", terms="self-hosted", consent=True, redact=False, redactors=(),
            request={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}, output=out, response=None,
            upstream_version=None, finish_reason="stop", status=200,
        )  # fmt: skip
        rows += process_capture(raw)
    store.write_batch(rows)
    task = next(t for t in list_tasks(store) if t["task"] == "pg-trim")
    assert task["distinct_outputs"] == 2 and task["kind"] == "classification" and task["requests"] == 24


async def _traffic(gw: Gateway, key: str, n: int) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as c:
        await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=demo_data.build_messages(text),  # type: ignore[arg-type]
                    metadata={"task": "pg-intent"},
                )
                for text, _ in demo_data.generate(n, seed=5, ambiguous_share=0)
            )
        )


def test_gateway_and_dataset_on_postgres(pg_url: str, tmp_path: Path) -> None:
    fake = SimulatedTeacher(speed=0, error_rate=0, server_error_rate=0).attach(FakeUpstream())
    handle = run_server(fake)
    config = tmp_path / "insource.toml"
    config.write_text(
        f'[store]\nurl = "{pg_url}"\n[providers.t]\nkind = "openai"\nbase_url = "{handle.url}/v1"\n'
        'terms = "self-hosted"\n[models."gpt-4o-mini"]\ntargets = ["t:gpt-4o-mini"]\n'
    )
    gw = start_gateway(config)
    try:
        created = json.loads(gw.cli("keys", "create", "--tenant", "pg", "--budget-usd", "5", "--json").stdout)
        asyncio.run(_traffic(gw, created["key"], 200))
        deadline = time.monotonic() + 5
        while True:
            spend = json.loads(gw.cli("spend", "--by", "day", "--json").stdout)
            if (spend and spend[0]["requests"] == 200) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert spend[0]["requests"] == 200 and isinstance(spend[0]["prompt_tokens"], int)
        assert len(spend[0]["day"]) == 10
        time.sleep(0.5)
        tasks = json.loads(gw.cli("tasks", "--json").stdout)
        assert tasks[0]["task"] == "pg-intent" and tasks[0]["kind"] == "classification"
        built = json.loads(
            gw.cli("dataset", "build", "--task", "pg-intent", "--out", str(tmp_path / "ds"), "--json").stdout
        )
        assert 180 <= sum(built["counts"].values()) <= 200  # near-duplicates removed
        needle = demo_data.generate(200, seed=5, ambiguous_share=0)[0][0][:24]
        found = json.loads(
            gw.cli("capture", "search", "--task", "pg-intent", "--contains", needle.upper(), "--json").stdout
        )
        assert found and all(needle.lower() in r["input"].lower() for r in found)  # case-insensitive, as SQLite
    finally:
        stop_gateway(gw)
        handle.stop()


def test_nul_characters_never_stop_usage_records(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL text cannot hold NUL: one such request must not poison the writer's batches."""
    fake = SimulatedTeacher(speed=0, error_rate=0, server_error_rate=0).attach(FakeUpstream())
    handle = run_server(fake)
    config = tmp_path / "insource.toml"
    config.write_text(
        f'[store]\nurl = "{pg_url}"\n[providers.t]\nkind = "openai"\nbase_url = "{handle.url}/v1"\n'
        'terms = "self-hosted"\n[models."gpt-4o-mini"]\ntargets = ["t:gpt-4o-mini"]\n'
    )
    gw = start_gateway(config)
    try:
        created = json.loads(gw.cli("keys", "create", "--tenant", "nul", "--json").stdout)
        auth = {"Authorization": f"Bearer {created['key']}"}
        bodies = [
            {"model": "x\u0000y", "messages": [{"role": "user", "content": "hi"}]},  # unknown model: 404, recorded
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\u0000b"}], "metadata": {"task": "n"}},
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "plain"}]},
        ]
        statuses = [httpx.post(gw.base_url + "/chat/completions", json=b, headers=auth).status_code for b in bodies]
        assert statuses == [404, 200, 200]
        deadline = time.monotonic() + 5
        while True:
            spend = json.loads(gw.cli("spend", "--by", "tenant", "--json").stdout)
            row = next((r for r in spend if r["tenant"] == "nul"), None)
            if (row and row["requests"] + row["refused"] == 3) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert row is not None and (row["requests"], row["refused"]) == (2, 1)  # the 404 was refused
    finally:
        stop_gateway(gw)
        handle.stop()


def test_capture_search_by_place(pg_url: str) -> None:
    """capture search --in on PostgreSQL: a shared system prompt matches only with `system` or `all`."""
    from insource.capture.inspect import search_captures
    from insource.capture.process import process_capture
    from insource.capture.record import CaptureRaw

    store = PgStore(pg_url)
    rows = []
    for i in range(3):
        user = f"ticket {i}" + ("\x00nul" if i == 2 else "")  # U+0000 cannot be in jsonb: must not break search
        messages = [{"role": "system", "content": "Shared Prompt"}, {"role": "user", "content": user}]
        raw = CaptureRaw(
            id=f"srch-{i}", ts=1_700_000_000.0 + i, tenant="t", key_id="k", task="pg-search", model="m",
            provider="p", upstream_model="m", served_by="p:m", terms="self-hosted", consent=True, redact=False,
            redactors=(), request={"model": "m", "messages": messages}, output=f"label_{i % 2}", response=None,
            upstream_version=None, finish_reason="stop", status=200, cost_usd=0.0,
        )  # fmt: skip
        rows += process_capture(raw)
    store.write_batch(rows)

    def ids(text: str, *places: str) -> list[str]:
        found = search_captures(store, "pg-search", text, 10, places=places or ("user", "answer"))
        return sorted(r["id"] for r in found)

    assert ids("shared prompt") == [] and ids("shared prompt", "system") == ["srch-0", "srch-1", "srch-2"]
    assert ids("shared prompt", "all") == ["srch-0", "srch-1", "srch-2"]
    assert ids("TICKET 1") == ["srch-1"] and ids("ticket 1", "answer") == []
    assert ids("label_1") == ["srch-1"] and ids("label_1", "user", "system") == []
