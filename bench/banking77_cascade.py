"""Banking77 end to end in cascade mode: teacher traffic → dataset → student → eval → cascade → replay.

Reports share insourced, agreement with the teacher, spend vs all-teacher, and the latency the cascade
path adds when the student answers. Starts everything on 127.0.0.1 and stops what it started.

    python bench/banking77_cascade.py [--train N] [--target 0.99]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._cascade import cli, replay, write_config  # noqa: E402
from tests.conftest import start_gateway, stop_gateway  # noqa: E402

from insource.testing.fake_upstream import FakeUpstream  # noqa: E402
from insource.testing.server import run_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77"
TASK = "banking77"


def load(split: str) -> list[tuple[str, str]]:
    with (DATA / f"{split}.csv").open(newline="") as fh:
        return [(r["text"], r["category"]) for r in csv.DictReader(fh)]


def prompt() -> str:
    labels = json.loads((DATA / "categories.json").read_text())
    return "Classify the online-banking customer's message into one intent: " + ", ".join(labels) + ". Intent only."


def learn(config: Path, folder: Path, target: float, student: str = "classifier") -> tuple[str, dict[str, Any], float]:
    """Dataset from the captured traffic, a distilled student and its eval: (model, eval report, seconds)."""
    t1 = time.perf_counter()
    cli(config, "dataset", "build", "--task", TASK, "--out", str(folder / "ds"))
    distill = ("distill", "--task", TASK, "--dataset", str(folder / "ds"), "--student", student)
    model = cli(config, *distill)["model"]
    ev = cli(
        config,
        "eval",
        "--task",
        TASK,
        "--model",
        model,
        "--dataset",
        str(folder / "ds"),
        "--target-agreement",
        str(target),
    )
    return model, ev, time.perf_counter() - t1


def set_cascade(config: Path, model: str, ev: dict[str, Any]) -> None:
    threshold = ev["threshold"] if ev["threshold"] is not None else 1.0
    cli(
        config,
        "route",
        "set",
        "--task",
        TASK,
        "--model",
        model,
        "--mode",
        "cascade",
        "--threshold",
        f"{threshold:.6f}",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=10003)
    ap.add_argument("--target", type=float, default=0.99)
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"missing {DATA}")
    train, test = load("train")[: args.train], load("test")
    gold = dict(train) | dict(test)
    fake = FakeUpstream(responder=lambda model, messages, body: gold.get(messages[-1]["content"], "unknown"))
    handle = run_server(fake)
    folder = Path(tempfile.mkdtemp(prefix="b77-cascade-"))
    config = write_config(folder, handle.url)
    gw = start_gateway(config)
    try:
        key = gw.key("bench")["key"]
        random.Random(0).shuffle(train)
        t0 = time.perf_counter()
        asyncio.run(replay(gw.base_url, key, TASK, prompt(), train))
        replay_s = time.perf_counter() - t0
        time.sleep(1.0)
        model, ev, learn_s = learn(config, folder, args.target)
        set_cascade(config, model, ev)
        # latency baseline: answered by the teacher (the gateway reloads the new route about a second later)
        teacher_only = asyncio.run(replay(gw.base_url, key, TASK, prompt(), test[:300], concurrency=1))
        time.sleep(1.2)
        results = asyncio.run(replay(gw.base_url, key, TASK, prompt(), test))
        single = asyncio.run(replay(gw.base_url, key, TASK, prompt(), test[:300], concurrency=1))
    finally:
        stop_gateway(gw)
        handle.stop()
    report(results, single, teacher_only, ev, model, replay_s, learn_s, len(train))


def report(
    results: list[dict[str, Any]],
    single: list[dict[str, Any]],
    teacher_only: list[dict[str, Any]],
    ev: dict[str, Any],
    model: str,
    replay_s: float,
    learn_s: float,
    n_train: int,
) -> None:
    student = [r for r in results if r["served_by"] == model]
    share = len(student) / len(results)
    agreement = sum(r["answer"] == r["gold"] for r in results) / len(results)
    student_agreement = sum(r["answer"] == r["gold"] for r in student) / max(1, len(student))
    teacher_per_req = ev["teacher_cost_per_1k_usd"] / 1000
    student_per_req = ev["cost_per_1k_usd"] / 1000
    cascade_cost = len(student) * student_per_req + (len(results) - len(student)) * teacher_per_req
    p50_student = (
        statistics.median(r["ms"] for r in single if r["served_by"] == model)
        if any(r["served_by"] == model for r in single)
        else float("nan")
    )
    p50_teacher = statistics.median(r["ms"] for r in teacher_only)
    lines = [
        f"Banking77 cascade benchmark ({time.strftime('%Y-%m-%d')}, 2 cores, no GPU)",
        f"teacher traffic replayed through the gateway: {n_train} requests in {replay_s:.1f} s",
        f"dataset + distill + eval: {learn_s:.1f} s -> {model}, threshold {ev['threshold']} "
        f"(target {ev['target_agreement']})",
        f"eval (test split of captured traffic): coverage {ev['coverage_at_threshold']:.3f}, "
        f"agreement there {ev['agreement_at_threshold']}",
        f"cascade on Banking77 test ({len(results)} requests): insourced {share:.1%}, "
        f"agreement with teacher {agreement:.2%} end to end, {student_agreement:.2%} on student answers",
        f"spend: cascade ${cascade_cost:.4f} vs all-teacher ${len(results) * teacher_per_req:.4f} "
        f"({cascade_cost / max(1e-12, len(results) * teacher_per_req):.1%})",
        f"latency at concurrency 1 (client-measured, gateway + HTTP): student-answered p50 {p50_student:.2f} ms; "
        f"teacher-answered (zero-latency fake teacher) p50 {p50_teacher:.2f} ms; "
        f"added by the cascade path {p50_student - p50_teacher:+.2f} ms",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "banking77_cascade.md").write_text("```\n" + text + "\n```\n")


if __name__ == "__main__":
    main()
