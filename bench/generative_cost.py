"""CPU cost per answer of a generative (LoRA) student on llama.cpp, and where it goes.

Runs the student's base GGUF + `adapter.gguf` on the same chats in several configurations (`MODES`) and reports
CPU seconds (process CPU, all threads) and wall seconds per answer, and the largest difference of the minimum
token log-prob (the confidence the cascade thresholds) from the old path's:

- `old-eval`: what `insource eval` did — `logits_all=True`, every core for decode and the batch threads left at
  llama-cpp-python's default, its own `logprobs` (a Python sort of the 49k-token vocabulary per answer token);
- `old-serve`: what the served `llama_cpp.server --n_threads 1 --logits_all true` did (batch threads defaulted);
- `1-thread`: the old log-probs with one thread for prompt and decode;
- `fast`: `insource.registry.llama.LogprobLlama`, one thread, no `logits_all`;
- `none`: one thread, no log-probs at all (the floor: generation alone);
- `served`: the gateway's serving command now (`python -m insource.registry.llama_server`), CPU read from /proc
  for the child around each request, as the gateway meters it.

    python bench/generative_cost.py --model models/T@vN --dataset DIR [--n 20] [--modes old-eval,fast,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def chats(dataset: Path, n: int, system: str | None) -> list[list[dict[str, str]]]:
    out = []
    for line in (dataset / "test.jsonl").read_text().splitlines()[:n]:
        messages = json.loads(line)["messages"][:-1]
        if system is not None and messages and messages[0].get("role") == "system":
            messages = messages[1:]
        out.append(messages)
    return out


MODES: dict[str, dict[str, Any]] = {
    # what eval did: every core for decode, the batch threads defaulted, llama-cpp-python's logprobs
    "old-eval": {"cls": "Llama", "logits_all": True, "n_threads": os.cpu_count() or 1, "logprobs": True},
    # what serving did (`llama_cpp.server --n_threads 1 --logits_all true`: n_threads_batch left at its default)
    "old-serve": {"cls": "Llama", "logits_all": True, "n_threads": 1, "logprobs": True},
    "1-thread": {"cls": "Llama", "logits_all": True, "n_threads": 1, "n_threads_batch": 1, "logprobs": True},
    "fast": {"cls": "LogprobLlama", "n_threads": 1, "n_threads_batch": 1, "logprobs": True},
    "none": {"cls": "Llama", "n_threads": 1, "n_threads_batch": 1, "logprobs": False},
}


def in_process(mode: str, base: Path, adapter: Path, data: list[Any]) -> dict[str, Any]:
    import llama_cpp

    from insource.registry.llama import LogprobLlama

    spec = dict(MODES[mode])
    cls = LogprobLlama if spec.pop("cls") == "LogprobLlama" else llama_cpp.Llama
    extra: dict[str, Any] = {"logprobs": True, "top_logprobs": 1} if spec.pop("logprobs") else {}
    llm = cls(model_path=str(base), lora_path=str(adapter), n_ctx=1024, verbose=False, **spec)
    llm.create_chat_completion(messages=data[0], max_tokens=96, temperature=0.0, **extra)  # warm-up
    cpu, wall, mins, tokens = [], [], [], []
    for messages in data:
        c0, w0 = time.process_time(), time.perf_counter()
        out: Any = llm.create_chat_completion(messages=messages, max_tokens=96, temperature=0.0, **extra)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        lps = [t["logprob"] for t in ((out["choices"][0].get("logprobs") or {}).get("content") or [])]
        mins.append(min(lps, default=0.0))
        tokens.append(out["usage"]["completion_tokens"])
    return {"cpu": cpu, "wall": wall, "min_lp": mins, "tokens": tokens}


def served(base: Path, adapter: Path, data: list[Any]) -> dict[str, Any]:
    """The new serving command (`LlamaCppProcess`), CPU of the child from /proc around each request."""
    from insource.service.generative import LlamaCppProcess, _cpu_seconds

    proc = LlamaCppProcess("cost@v1", base, adapter, Path("/tmp/insource-generative-cost"))
    proc.start()
    try:
        url = f"http://127.0.0.1:{proc.port}/v1/chat/completions"
        pid = proc.proc.pid if proc.proc else 0
        cpu, wall, mins, tokens = [], [], [], []
        for i, messages in enumerate([data[0], *data]):
            body = {"messages": messages, "max_tokens": 96, "temperature": 0.0, "logprobs": True, "top_logprobs": 1,
                    "repeat_penalty": 1.0}  # fmt: skip
            req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            c0, w0 = _cpu_seconds(pid) or 0.0, time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as resp:
                out = json.loads(resp.read())
            if i == 0:
                continue  # warm-up
            cpu.append((_cpu_seconds(pid) or 0.0) - c0)
            wall.append(time.perf_counter() - w0)
            lps = [t["logprob"] for t in ((out["choices"][0].get("logprobs") or {}).get("content") or [])]
            mins.append(min(lps, default=0.0))
            tokens.append(out["usage"]["completion_tokens"])
    finally:
        proc.stop()
    return {"cpu": cpu, "wall": wall, "min_lp": mins, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="a LoRA student's folder (models/T@vN)")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--modes", default="old-eval,old-serve,1-thread,fast,none,served")
    args = ap.parse_args()
    info = json.loads((args.model / "model.json").read_text())
    base, adapter = Path(info["runtime"]["base_gguf"]), args.model / "adapter.gguf"
    data = chats(args.dataset, args.n, info.get("system_prompt"))
    rows, ref = [], None
    for mode in args.modes.split(","):
        load0 = os.getloadavg()[0]
        r = served(base, adapter, data) if mode == "served" else in_process(mode, base, adapter, data)
        if mode.startswith("old") and ref is None:
            ref = r["min_lp"]
        diff = max((abs(a - b) for a, b in zip(r["min_lp"], ref or [], strict=False)), default=None)
        rows.append(
            f"| {mode} | {statistics.mean(r['cpu']):.3f} | {statistics.median(r['wall']) * 1000:.0f} | "
            f"{statistics.mean(r['tokens']):.1f} | {'-' if mode == 'none' or diff is None else f'{diff:.1e}'} | "
            f"{load0:.1f} |"
        )
        print(rows[-1], flush=True)
    head = (
        f"Generative student CPU cost per answer ({time.strftime('%Y-%m-%d')}, {args.model.name}, {len(data)} "
        f"answers, 2 cores shared)\n\n| mode | CPU-s/answer | wall p50 ms | answer tokens | "
        f"max abs diff of min log-prob vs old | load avg |\n|---|---|---|---|---|---|"
    )
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    (ROOT / "bench" / "results" / "generative_cost.md").write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
