"""Sending a task back to the teacher by hand: `insource route off` and `POST /admin/routes/T/off`.

Driven as an operator would, against a real `insource serve --workers 2`: after `route off` every worker lets
the teacher answer within a second, `route show` says `off` and keeps when and why, `route set` turns the
task on again; an unknown task is a clear error (CLI exit 2, HTTP 404 in the OpenAI error shape).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import Gateway, run_cli, start_gateway, stop_gateway

from insource.capture.dataset_read import write_dataset
from insource.demo import data as demo_data
from insource.demo.teacher import SimulatedTeacher
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

TASK = "support"
TEACHER = "teacher:gpt-4o-mini"
ADMIN_KEY = "adm-route-off-1"


@dataclass
class Home:
    gw: Gateway
    key: str
    model: str


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> Iterator[Home]:
    """Two workers in front of a simulated teacher, with a student distilled for TASK in the registry."""
    base = tmp_path_factory.mktemp("route-off")
    teacher = SimulatedTeacher(speed=0, error_rate=0, server_error_rate=0, ambiguous_flip_rate=0)
    handle: ServerHandle = run_server(teacher.attach(FakeUpstream()))
    config = base / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[server]\nadmin_key = "env::ROUTE_OFF_ADMIN_KEY"\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = "{handle.url}/v1"\nterms = "self-hosted"\n'
        f'[models."gpt-4o-mini"]\ntargets = ["{TEACHER}"]\n'
    )
    shutil.copytree(encoder_cache / "encoders", base / "models" / ".cache" / "encoders")
    pairs = demo_data.generate(260, seed=31, ambiguous_share=0)
    dataset = write_dataset(base / "ds", TASK, {"train": pairs[:200], "val": pairs[200:230], "test": pairs[230:]})
    distilled = run_cli("distill", "--task", TASK, "--dataset", str(dataset), "--config", str(config), "--json")
    gw = start_gateway(config, {"ROUTE_OFF_ADMIN_KEY": ADMIN_KEY}, workers=2)
    try:
        yield Home(gw, gw.key("ops")["key"], json.loads(distilled.stdout)["model"])
    finally:
        stop_gateway(gw)
        handle.stop()
        shutil.rmtree(base, ignore_errors=True)


def served_by(h: Home, n: int = 12) -> set[str]:
    """Who answered `n` requests, each on a new connection (so both workers answer some)."""
    who = set()
    for text, _ in demo_data.generate(n, seed=int(time.time() * 1000) % 100_000, ambiguous_share=0):
        with openai.OpenAI(base_url=h.gw.base_url, api_key=h.key, max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}], metadata={"task": TASK}
            )
        who.add(raw.headers.get("x-insource-served-by", ""))
    return who


def row(h: Home) -> dict[str, Any]:
    rows = json.loads(h.gw.cli("route", "show", "--json").stdout)
    return next(r for r in rows if r["task"] == TASK)


def route_on(h: Home) -> None:
    h.gw.cli("route", "set", "--task", TASK, "--model", h.model, "--mode", "full")
    time.sleep(1.1)
    assert served_by(h) == {h.model}
    assert row(h)["state"] == "answering"


ISSUE5_KEYS = {"task", "model", "mode", "threshold", "percent", "audit_rate", "floor", "agreement", "n", "events"}


def test_route_off_by_cli_returns_the_task_to_the_teacher_on_every_worker(home: Home) -> None:
    route_on(home)
    off = home.gw.cli("route", "off", "--task", TASK, "--reason", "wrong answers reported by support")
    assert off.returncode == 0 and "teacher" in off.stdout
    time.sleep(1.0)  # every worker reloads routes every 0.5 s
    assert served_by(home) == {TEACHER}
    shown = row(home)
    assert set(shown) >= ISSUE5_KEYS and shown["state"] == "off" and shown["model"] == home.model
    last = shown["events"][-1]
    assert last["kind"] == "off" and last["detail"]["reason"] == "wrong answers reported by support"
    assert abs(last["ts"] - time.time()) < 30
    text = home.gw.cli("route", "show").stdout
    assert "off" in text and "wrong answers" in text
    again = home.gw.cli("route", "off", "--task", TASK, "--json")  # already off: still exit 0, no new event
    assert json.loads(again.stdout)["state"] == "off" and len(row(home)["events"]) == len(shown["events"])
    route_on(home)  # `route set` turns it on again; the history keeps the off event
    assert [e["kind"] for e in row(home)["events"]][-2:] == ["off", "set"]


def test_route_off_by_admin_api(home: Home) -> None:
    route_on(home)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = f"{home.gw.url}/admin/routes/{TASK}/off"
    assert httpx.post(url, json={"reason": "incident 42"}).status_code == 401  # the admin key is required
    resp = httpx.post(url, json={"reason": "incident 42"}, headers=admin)
    assert resp.status_code == 200 and resp.json()["state"] == "off"
    time.sleep(1.0)
    assert served_by(home) == {TEACHER}
    detail = row(home)["events"][-1]["detail"]
    assert (detail["reason"], detail["by"]) == ("incident 42", "admin")
    route_on(home)  # the CLI drives a remote gateway through the same endpoint
    remote = ("route", "off", "--task", TASK, "--url", home.gw.url, "--json")
    result = run_cli(*remote, env={"INSOURCE_ADMIN_KEY": ADMIN_KEY})
    assert json.loads(result.stdout)["state"] == "off"
    time.sleep(1.0)
    assert served_by(home) == {TEACHER}


def test_route_off_an_unknown_task_is_a_clear_error(home: Home) -> None:
    result = home.gw.cli("route", "off", "--task", "no-such-task", check=False)
    assert result.returncode != 0 and "no route for task 'no-such-task'" in result.stderr
    assert "Traceback" not in result.stderr
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    resp = httpx.post(f"{home.gw.url}/admin/routes/no-such-task/off", headers=admin)
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "route_not_found" and "no-such-task" in error["message"]
    bad = httpx.post(f"{home.gw.url}/admin/routes/{TASK}/off", json={"reason": 7}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reason"


def test_a_config_route_turned_off_stays_off_until_route_set(home: Home, tmp_path: Path) -> None:
    """A route from `[routes.T]` in the config, before any store exists: `route off` writes the store (it must
    outlive the command) and the route is off until `route set`."""
    registry = home.gw.config.parent / "models"
    config = tmp_path / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[registry]\npath = "{registry}"\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nterms = "self-hosted"\n'
        f'[models."gpt-4o-mini"]\ntargets = ["{TEACHER}"]\n[routes.{TASK}]\nmodel = "{home.model}"\nmode = "full"\n'
    )

    def state() -> str:
        rows = json.loads(run_cli("route", "show", "--json", "--config", str(config)).stdout)
        return str(next(r for r in rows if r["task"] == TASK)["state"])

    assert state() == "answering"
    run_cli("route", "off", "--task", TASK, "--reason", "maintenance", "--config", str(config))
    assert (tmp_path / "insource.db").exists() and state() == "off"
    run_cli("route", "set", "--task", TASK, "--model", home.model, "--mode", "full", "--config", str(config))
    assert state() == "answering"
