"""Acceptance regressions for the insourcing router, the demo and the gateway, driven as a user would.

- a student distilled from a dataset written from (input, answer) pairs (`distill.dataset.write_dataset`,
  how public data is replayed) is served by the router, streamed too, instead of failing on every request;
- `route set` (and a config route) refuses a generative (LoRA) student the router cannot serve;
- `insource demo --dir` never replaces a store, config or registry it did not write;
- `GET /v1/models/{model}` (the SDK's `models.retrieve`) answers, and 404 `model_not_found` for unknown models.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from rich.console import Console
from tests.conftest import Gateway, run_cli, start_gateway, stop_gateway

from insource.capture.dataset_read import write_dataset
from insource.demo import data as demo_data
from insource.demo.teacher import SimulatedTeacher
from insource.service.students import StudentPool, input_template
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

TASK = "pairs"
TEACHER = "teacher:gpt-4o-mini"


@dataclass
class Home:
    gw: Gateway
    key: str
    model: str


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> Iterator[Home]:
    """A gateway whose registry holds a student distilled from a `write_dataset` dataset (no prompt template)."""
    base = tmp_path_factory.mktemp("routing-acceptance")
    teacher = SimulatedTeacher(speed=0, error_rate=0, server_error_rate=0, ambiguous_flip_rate=0)
    handle: ServerHandle = run_server(teacher.attach(FakeUpstream()))
    config = base / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[providers.teacher]\nkind = "openai"\n'
        f'base_url = "{handle.url}/v1"\nterms = "self-hosted"\n[models."gpt-4o-mini"]\n'
        f'targets = ["teacher:gpt-4o-mini"]\n'
    )
    shutil.copytree(encoder_cache / "encoders", base / "models" / ".cache" / "encoders")
    pairs = demo_data.generate(260, seed=23, ambiguous_share=0)
    dataset = write_dataset(base / "ds", TASK, {"train": pairs[:200], "val": pairs[200:230], "test": pairs[230:]})
    distilled = run_cli("distill", "--task", TASK, "--dataset", str(dataset), "--config", str(config), "--json")
    gw = start_gateway(config)
    try:
        yield Home(gw, gw.key("acceptance")["key"], json.loads(distilled.stdout)["model"])
    finally:
        stop_gateway(gw)
        handle.stop()
        shutil.rmtree(base, ignore_errors=True)


def client(h: Home) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.gw.base_url, api_key=h.key, max_retries=0)


def ask(h: Home, content: Any) -> tuple[str, str]:
    raw = client(h).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
        metadata={"task": TASK},
    )
    return raw.parse().choices[0].message.content or "", raw.headers["x-insource-served-by"]


def test_a_student_distilled_from_pairs_is_served(home: Home) -> None:
    info = json.loads((home.gw.config.parent / "models" / home.model / "model.json").read_text())
    assert info["template"] == {}  # what write_dataset records: no inferred prompt template
    home.gw.cli("route", "set", "--task", TASK, "--model", home.model, "--mode", "full")
    time.sleep(1.1)  # every worker applies a route within a second
    started = time.time()
    texts = [text for text, _ in demo_data.generate(6, seed=24, ambiguous_share=0)]
    answers = [ask(home, text) for text in texts]
    assert {who for _, who in answers} == {home.model}  # was the teacher: the student failed to load, every time
    assert all(answer in demo_data.INTENTS for answer, _ in answers)
    parts = [{"type": "text", "text": texts[0]}]  # content parts: the same text, so the same answer
    assert ask(home, parts) == answers[0]
    with client(home).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": texts[1]}],
        metadata={"task": TASK},
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-insource-served-by"] == home.model
        chunks = list(resp.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answers[1][0]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    rows = home.gw.usage_rows("ts>=?", (started,), wait_for=len(texts) + 2)
    assert len(rows) == len(texts) + 2 and {r["served_by"] for r in rows} == {home.model}
    assert all(r["cost_avoided_usd"] > r["cost_usd"] > 0 for r in rows)


def test_registries_from_before_read_the_pairs_template_as_none() -> None:
    assert input_template({"slots": ["input"]}) is None and input_template({}) is None
    inferred = input_template({"version": 1, "constant": [], "slot": 0, "n_messages": 1})
    assert inferred is not None and inferred.slot == 0


def test_the_student_input_is_the_text_of_the_last_user_message() -> None:
    pool = StudentPool(Path("/nonexistent"))  # a student without a template: as write_dataset trained it
    try:
        messages = [
            {"role": "system", "content": "Classify."},
            {"role": "user", "content": [{"type": "text", "text": "  where is my parcel  "}]},
        ]
        assert pool.extract("pairs@v1", messages) == "where is my parcel"  # not the list's repr
    finally:
        pool.close()


def write_lora_entry(registry: Path, name: str, task: str) -> None:
    """A generative student as `insource distill --student lora` registers it (its adapter, no classifier)."""
    folder = registry / name
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    info = {
        "name": name,
        "task": task,
        "version": int(name.rsplit("@v", 1)[1]),
        "student": "lora",
        "labels": [],
        "metrics": {},
        "runtime": {"serving": "vLLM or llama.cpp (docs/lora.md)", "adapter": "adapter/"},
        "files": {"adapter/adapter_model.safetensors": 64},
    }
    (folder / "model.json").write_text(json.dumps(info))


def test_route_set_accepts_a_generative_student(home: Home, tmp_path: Path) -> None:
    """Issue 13: a LoRA student is routed like a classifier (served by llama.cpp; tests/test_generative_serving.py
    checks the answers). It was refused while nothing could serve it."""
    registry = home.gw.config.parent / "models"
    write_lora_entry(registry, f"{TASK}@v50", TASK)
    try:
        models = json.loads(home.gw.cli("models", "list", "--json").stdout)
        assert next(m for m in models if m["name"] == f"{TASK}@v50")["student"] == "lora"
        done = home.gw.cli("route", "set", "--task", TASK, "--model", f"{TASK}@v50", "--mode", "shadow", check=False)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        routes = json.loads(home.gw.cli("route", "show", "--json").stdout)
        assert next(r for r in routes if r["task"] == TASK)["model"] == f"{TASK}@v50"
        home.gw.cli("route", "off", "--task", TASK)
    finally:
        shutil.rmtree(registry / f"{TASK}@v50")


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    project = tmp_path / "gateway-home"  # a gateway's own folder, laid out as the README shows
    (project / "models" / "intent@v1").mkdir(parents=True)
    (project / "models" / "intent@v1" / "model.json").write_text("{}")
    (project / "insource.toml").write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    (project / "insource.db").write_bytes(b"production spend")
    result = subprocess.run(
        [sys.executable, "-m", "insource", "demo", "--quick", "--dir", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "did not write" in " ".join(result.stderr.split())
    assert (project / "insource.db").read_bytes() == b"production spend"  # it used to be deleted, with models/
    assert (project / "models" / "intent@v1" / "model.json").exists()
    assert (project / "insource.toml").read_text().startswith("[store]")


def test_demo_still_replaces_its_own_previous_run(tmp_path: Path) -> None:
    from insource.demo.runner import DemoSettings, prepare_folder, write_config

    folder = tmp_path / "insource-demo"
    folder.mkdir()
    write_config(DemoSettings(folder=folder), "http://127.0.0.1:9/v1")  # what a previous run left
    (folder / "insource.db").write_bytes(b"old demo")
    (folder / "models" / "support-intent@v1").mkdir(parents=True)
    prepare_folder(folder, Console(file=None, quiet=True))
    assert not (folder / "insource.db").exists() and not (folder / "models").exists()
    assert not (folder / "insource.toml").exists()
    prepare_folder(tmp_path / "new", Console(quiet=True))  # a new folder is created
    assert (tmp_path / "new").is_dir()


def test_models_retrieve_and_unknown_model(gateway: Gateway) -> None:
    key = gateway.key("retrieve")["key"]
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as missing:
        c.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"
    body = missing.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    limited = gateway.key("retrieve", models=["gpt-4o-mini"])["key"]
    c2 = openai.OpenAI(base_url=gateway.base_url, api_key=limited, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        c2.models.retrieve("flaky-mini")  # exists, but not for this key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="isk-wrong", max_retries=0).models.retrieve("gpt-4o-mini")


def test_route_set_pins_latest_to_the_version_it_names_now(home: Home) -> None:
    for name in (f"{TASK}@latest", TASK):
        out = home.gw.cli("route", "set", "--task", TASK, "--model", name, "--mode", "shadow", "--json").stdout
        assert json.loads(out)["model"] == home.model
        (row,) = [r for r in json.loads(home.gw.cli("route", "show", "--json").stdout) if r["task"] == TASK]
        assert row["model"] == home.model and row["events"][-1]["detail"]["model"] == home.model
    missing = run_cli(
        "route",
        "set",
        "--task",
        "nothing",
        "--model",
        "nothing@latest",
        "--mode",
        "shadow",
        "--config",
        str(home.gw.config),
        check=False,
    )
    assert missing.returncode != 0 and "no usable model registered for task 'nothing'" in missing.stderr
