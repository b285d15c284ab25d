"""Opportunity finder and template assignment on constructed stores (real SQLite, the real CLI) and through a
real two-worker `insource serve`: every worker tags new requests of an assigned template within a second."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import run_cli, start_gateway, stop_gateway

from insource.capture.assigned import AssignedTemplates
from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.config import load_config
from insource.store import Store, open_store
from insource.store.opportunities import assignments
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import run_server
from insource.testing.table_teacher import TableTeacher

SYSTEM = "Route the ticket to billing, tech or sales. Answer with the team only."


def put(store: Store, messages: list[dict[str, str]], output: str, ts: float, task: str | None = None) -> None:
    cid = uuid.uuid4().hex
    raw = CaptureRaw(
        id=cid, ts=ts, tenant="t", key_id="k", task=task, model="m", provider="p", upstream_model="m",
        served_by="p:m", terms="self-hosted", consent=True, redact=True, redactors=("secrets",),
        request={"model": "m", "messages": messages}, output=output, response=None, upstream_version="m",
        finish_reason="stop", status=200,
    )  # fmt: skip
    usage = {
        "id": cid, "ts": ts, "tenant": "t", "key_id": "k", "endpoint": "chat", "model": "m", "served_by": "p:m",
        "task": task, "status": 200, "prompt_tokens": 50, "completion_tokens": 5, "cost_usd": 0.001,
    }  # fmt: skip
    store.write_batch([*process_capture(raw), ("usage", usage, False)])


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    store = open_store(load_config(config))
    t0 = time.time() - 2 * 86400
    for i in range(30):
        ticket = f"ticket {i}: my invoice {i} is wrong" if i % 3 else f"the app crashes on screen {i}"
        put(
            store,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}],
            "billing" if i % 3 else "tech",
            t0 + i,
        )
    for i in range(4):  # the same message sent again and again is input, never shown as template text
        put(
            store,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Jane Roe here, call me"}],
            "tech",
            t0 + 50 + i,
        )
    for i in range(12):  # tagged traffic with an instruction prefix and suffix
        put(
            store,
            [{"role": "user", "content": f"Translate to French:\n{i} apples\nFrench:"}],
            f"{i} pommes",
            t0 + 100 + i,
            "fr",
        )
    for i in range(6):  # an instruction with a wildcard of its own: Drain's head template keys it
        text = f"Order #{'ABC'[i % 3]}-{10 + i} status: where is my parcel {i}?"
        put(store, [{"role": "user", "content": text}], "shipped" if i % 2 else "pending", t0 + 200 + i)
    store.close()
    return config


def opportunities(config: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(run_cli("opportunities", "--json", "--config", str(config)).stdout)
    return rows


def test_templates_constant_text_and_slots(home: Path) -> None:
    rows = opportunities(home)
    by_text = {r["template"]: r for r in rows}
    route = by_text[f"[system] {SYSTEM}\n[user] <*>"]
    assert route["requests"] == 34 and route["task"] is None and route["kind"] == "classification"
    assert not any("Jane Roe" in r["template"] for r in rows)
    assert route["labels"] == ["billing", "tech"]
    assert route["monthly_spend_usd"] == pytest.approx(34 * 0.001 * 30, rel=0.01)  # under a day: one day scaled to 30
    french = by_text["[user] Translate to French:\n<*>\nFrench:"]
    assert french["task"] == "fr" and french["kind"] == "generation" and french["labels"] is None
    assert "insource dataset build --task fr" in french["next"] or "keep on the teacher" in french["next"]
    assert route["score"] > french["score"]
    order = by_text["[user] Order <*> status: <*>"]
    assert order["requests"] == 6 and order["kind"] == "classification" and order["labels"] == ["pending", "shipped"]
    assert len(rows) == 3
    assert [r["template_id"] for r in opportunities(home)] == [r["template_id"] for r in rows]  # stable ids


def test_assign_tags_past_requests_and_checks_input(home: Path) -> None:
    tid = next(r["template_id"] for r in opportunities(home) if SYSTEM in r["template"])
    out = run_cli("tasks", "assign", "--template", tid, "--task", "router", "--config", str(home), "--json")
    assert json.loads(out.stdout) == {"template_id": tid, "task": "router", "tagged": 34}
    tasks = json.loads(run_cli("tasks", "--json", "--config", str(home)).stdout)
    assert {t["task"]: t["requests"] for t in tasks} == {"fr": 12, "router": 34}
    again = run_cli("tasks", "assign", "--template", tid, "--task", "router", "--config", str(home), "--json")
    assert json.loads(again.stdout)["tagged"] == 0  # idempotent
    assert next(r for r in opportunities(home) if r["template_id"] == tid)["task"] == "router"
    order = next(r["template_id"] for r in opportunities(home) if r["template"].startswith("[user] Order <*>"))
    out = run_cli("tasks", "assign", "--template", order, "--task", "orders", "--config", str(home), "--json")
    assert json.loads(out.stdout)["tagged"] == 6
    store = open_store(load_config(home))
    assigned = AssignedTemplates.from_rows(assignments(store))
    store.close()
    assert assigned.task_for([{"role": "user", "content": "Order #Q-7 status: late again"}]) == "orders"
    assert assigned.task_for([{"role": "user", "content": "Where is my order #Q-7?"}]) is None
    assert assigned.task_for([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]) == "router"
    bad = run_cli("tasks", "assign", "--template", tid, "--task", " ", "--config", str(home), check=False)
    assert bad.returncode == 2 and "--task" in bad.stderr and "Traceback" not in bad.stderr


def test_empty_store_says_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    assert opportunities(config) == []
    text = run_cli("opportunities", "--config", str(config)).stdout
    assert "No captured traffic yet" in text
    missing = run_cli("tasks", "assign", "--template", "t_x", "--task", "a", "--config", str(config), check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_server_never_imports_the_miner() -> None:
    code = "import sys, insource.server.app, insource.service.chat; assert 'drain3' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_worker_tags_an_assigned_template_within_a_second(tmp_path: Path) -> None:
    tickets = {f"ticket {i}: my card {i} is blocked": "billing" for i in range(12)}
    handle = run_server(FakeUpstream(responder=TableTeacher(tickets)))
    config = tmp_path / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[providers.up]\nkind = "openai"\nbase_url = "{handle.url}/v1"\n'
        '[models."m"]\ntargets = ["up:gpt-4o-mini"]\nprice = { input_per_mtok = 0.15, output_per_mtok = 0.6 }\n'
    )
    gw = start_gateway(config, workers=2)
    try:
        key = gw.key("app")["key"]
        headers = {"Authorization": f"Bearer {key}"}

        def send(text: str) -> None:
            body = {
                "model": "m",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            }
            assert (
                httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=10).status_code == 200
            )

        for text in tickets:
            send(text)
        gw.usage_rows(wait_for=12)
        time.sleep(0.3)
        tid = next(r["template_id"] for r in opportunities(config) if SYSTEM in r["template"])
        gw.cli("tasks", "assign", "--template", tid, "--task", "router")
        time.sleep(1.0)
        for i in range(16):  # spread over both workers
            send(f"new ticket {i}")
        rows = gw.usage_rows(wait_for=28)
        assert [r["task"] for r in rows[12:]] == ["router"] * 16
    finally:
        stop_gateway(gw)
        handle.stop()
