"""Capture benchmark: µs per `process_capture` and captured requests/s through BatchWriter into SQLite.

Prompts are Banking77 messages (../shared/data/banking77) as classification prompts: a system prompt listing
the 77 intents plus the customer's message; the teacher answer is the gold intent. Every tenth message
carries personal data so the redactors have real work. Run:

    python bench/capture_bench.py [--n 13000] [--json]

Targets (issue 3): the writer sustains >= 20k captured requests/s; the hot path (build CaptureRaw, submit)
stays <= 0.05 ms.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.store import Store
from insource.store.writer import BatchWriter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"
PII = " My email is jane.roe{i}@example.com and card 4111 1111 1111 1111, call +44 20 7946 0958."


def load_prompts() -> tuple[str, list[tuple[str, str]]]:
    if not (DATA / "train.csv").exists():
        sys.exit(f"benchmark data not found: {DATA} (needs ../shared/data/banking77 beside the repo)")
    labels = json.loads((DATA / "categories.json").read_text())
    system = "Classify the customer's message into exactly one intent:\n" + "\n".join(labels) + "\nAnswer: intent."
    rows = []
    for name in ("train.csv", "test.csv"):  # 13,083 distinct customer messages
        with (DATA / name).open(newline="", encoding="utf-8") as fh:
            rows += [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    return system, rows


def make_raw(i: int, system: str, text: str, label: str) -> CaptureRaw:
    if i % 10 == 0:
        text += PII.format(i=i)
    return CaptureRaw(
        id=f"bench-{i}",
        ts=1_700_000_000.0 + i * 0.01,
        tenant="acme",
        key_id="key-1",
        task="intent",
        model="classifier",
        provider="openai",
        upstream_model="gpt-4o-mini",
        served_by="openai:gpt-4o-mini",
        terms="openai",
        consent=True,
        redact=True,
        redactors=("secrets", "email", "phone", "card", "iban"),
        request={
            "model": "classifier",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
            "temperature": 0,
        },
        output=label,
        response={"model": "gpt-4o-mini-2024-07-18", "choices": [{"message": {"content": label}}]},
        upstream_version="gpt-4o-mini-2024-07-18",
        finish_reason="stop",
        status=200,
        cost_usd=0.00012,
    )


def bench_process(raws: list[CaptureRaw]) -> dict[str, float]:
    times = []
    for raw in raws:
        t0 = time.perf_counter()
        process_capture(raw)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "process_us_mean": statistics.fmean(times) * 1e6,
        "process_us_p50": times[len(times) // 2] * 1e6,
        "process_us_p99": times[int(len(times) * 0.99)] * 1e6,
    }


def bench_hot_path(system: str, rows: list[tuple[str, str]], n: int) -> float:
    """µs to build a CaptureRaw and queue it (the request-path share of capture)."""

    class NullWriter:
        def __init__(self) -> None:
            self.items: list[Any] = []

        def submit_fn(self, fn: Any) -> None:
            self.items.append(fn)

    writer = NullWriter()
    t0 = time.perf_counter()
    for i in range(n):
        text, label = rows[i % len(rows)]
        writer.submit_fn(functools.partial(process_capture, make_raw(i, system, text, label)))
    return (time.perf_counter() - t0) / n * 1e6


def bench_writer(raws: list[CaptureRaw], with_usage: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        writer = BatchWriter(store, Path(tmp) / "spool", max_queue=len(raws) * 2 + 10, batch_size=1000)
        t0, c0 = time.perf_counter(), time.process_time()
        for raw in raws:
            writer.submit_fn(functools.partial(process_capture, raw))
            if with_usage:
                writer.submit(
                    "usage",
                    {"id": raw.id, "ts": raw.ts, "tenant": raw.tenant, "key_id": raw.key_id,
                     "endpoint": "chat.completions", "task": raw.task, "status": raw.status, "cost_usd": raw.cost_usd},
                )  # fmt: skip
        if not writer.flush(timeout=600):
            sys.exit("writer did not drain within 600 s")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        report = writer.report()
        writer.close()
        captured = store.query_one("SELECT COUNT(*) AS n FROM captures")
        blobs = store.query_one("SELECT COUNT(*) AS n FROM blobs")
        store.close()
    if report["failed"] or report["dropped"] or report["spooled"]:
        sys.exit(f"writer problems: {report}")
    assert captured is not None and blobs is not None
    return {
        "requests_per_s": len(raws) / elapsed,
        "cpu_us_per_request": cpu / len(raws) * 1e6,  # all threads: submit + process_capture + SQLite
        "captures": captured["n"],
        "blobs": blobs["n"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=13_000, help="captured requests per run (<= 13,083: all distinct)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    system, rows = load_prompts()
    raws = [make_raw(i, system, *rows[i % len(rows)]) for i in range(args.n)]
    result: dict[str, Any] = {"n": args.n}
    result.update(bench_process(raws))
    result["hot_path_us"] = bench_hot_path(system, rows, args.n)
    writer_only = bench_writer(raws, with_usage=False)
    with_usage = bench_writer(raws, with_usage=True)
    result["writer_captures_per_s"] = writer_only["requests_per_s"]
    result["writer_captures_plus_usage_per_s"] = with_usage["requests_per_s"]
    result["writer_cpu_us_per_capture"] = writer_only["cpu_us_per_request"]
    result["blobs_stored"] = writer_only["blobs"]
    result["loadavg_1m"] = os.getloadavg()[0]  # other work on the machine inflates wall-clock figures
    if args.json:
        print(json.dumps(result))
        return
    print(f"process_capture: mean {result['process_us_mean']:.1f} µs, p50 {result['process_us_p50']:.1f} µs, "
          f"p99 {result['process_us_p99']:.1f} µs")  # fmt: skip
    print(f"hot path (build CaptureRaw + submit_fn): {result['hot_path_us']:.2f} µs/request (target <= 50 µs)")
    print(f"writer: {result['writer_captures_per_s']:,.0f} captured requests/s into SQLite (target >= 20,000); "
          f"{result['writer_captures_plus_usage_per_s']:,.0f}/s with the usage row too")  # fmt: skip
    cpu = result["writer_cpu_us_per_capture"]
    print(f"writer CPU: {cpu:.1f} µs per captured request (all threads) = {1e6 / cpu:,.0f}/s per fully used core; "
          f"load average {result['loadavg_1m']:.1f} during the run")  # fmt: skip
    print(f"content addressing: {args.n} requests -> {result['blobs_stored']} message blobs")


if __name__ == "__main__":
    main()
