"""CPU cost per answer of a generative (LoRA) student on llama.cpp, and where it goes.

Runs the student's base GGUF + `adapter.gguf` in process on the same chats in several configurations and reports
CPU seconds (process CPU, all threads) and wall seconds per answer, and the largest difference of the minimum
token log-prob from llama-cpp-python's own (the confidence the cascade thresholds):

- `stock`: what eval and serving did — `logits_all=True`, `logprobs=True, top_logprobs=1`;
- `fast`: `insource.registry.llama.LogprobLlama` — `logits_all=False`, the chosen token's log-prob recorded while
  sampling;
- `none`: no log-probs at all (the floor: generation alone);
- `served`: `fast` behind the supervised server (`python -m insource.registry.llama_server`), CPU read from
  /proc for the child process around each request, as the gateway meters it.

    python bench/generative_cost.py --model models/T@vN --dataset DIR [--n 20] [--threads 1,2]
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


def in_process(mode: str, base: Path, adapter: Path, threads: int, data: list[Any]) -> dict[str, Any]:
    from llama_cpp import Llama

    from insource.registry.llama import LogprobLlama

    cls = LogprobLlama if mode == "fast" else Llama
    llm = cls(model_path=str(base), lora_path=str(adapter), logits_all=mode == "stock", n_ctx=1024,
              n_threads=threads, verbose=False)  # fmt: skip
    extra: dict[str, Any] = {"logprobs": True, "top_logprobs": 1} if mode != "none" else {}
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


def served(base: Path, adapter: Path, threads: int, data: list[Any]) -> dict[str, Any]:
    from insource.service.generative import LlamaCppProcess, _cpu_seconds

    proc = LlamaCppProcess("cost@v1", base, adapter, Path("/tmp/insource-generative-cost"), threads=threads)
    proc.start()
    try:
        url = f"http://127.0.0.1:{proc.port}/v1/chat/completions"
        pid = proc.proc.pid if proc.proc else 0
        cpu, wall, mins, tokens = [], [], [], []
        for i, messages in enumerate([data[0], *data]):
            body = {"messages": messages, "max_tokens": 96, "temperature": 0.0, "logprobs": True, "top_logprobs": 1}
            req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            c0, w0 = _cpu_seconds(pid) or 0.0, time.perf_counter()
            with urllib.request.urlopen(req, timeout=300) as resp:
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
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default="stock,fast,none,served")
    args = ap.parse_args()
    info = json.loads((args.model / "model.json").read_text())
    base, adapter = Path(info["runtime"]["base_gguf"]), args.model / "adapter.gguf"
    data = chats(args.dataset, args.n, info.get("system_prompt"))
    rows, ref = [], None
    for threads in [int(t) for t in args.threads.split(",")]:
        for mode in args.modes.split(","):
            load0 = os.getloadavg()[0]
            if mode == "served":
                r = served(base, adapter, threads, data)
            else:
                r = in_process(mode, base, adapter, threads, data)
            if mode == "stock" and ref is None:
                ref = r["min_lp"]
            diff = max((abs(a - b) for a, b in zip(r["min_lp"], ref or [], strict=False)), default=None)
            rows.append(
                f"| {mode} | {threads} | {statistics.mean(r['cpu']):.3f} | {statistics.median(r['wall']) * 1000:.0f} | "
                f"{statistics.mean(r['tokens']):.1f} | {'-' if mode == 'none' or diff is None else f'{diff:.2e}'} | "
                f"{load0:.1f} |"
            )
            print(rows[-1], flush=True)
    head = (
        f"Generative student CPU cost per answer ({time.strftime('%Y-%m-%d')}, {args.model.name}, {len(data)} "
        f"answers, 2 cores shared)\n\n| mode | threads | CPU-s/answer | wall p50 ms | answer tokens | "
        f"max abs diff of min log-prob vs stock | load avg |\n|---|---|---|---|---|---|---|"
    )
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    (ROOT / "bench" / "results" / "generative_cost.md").write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
