"""SNIPS as an extraction task, end to end on a CPU: teacher traffic → dataset → LoRA student → eval (json) →
cascade at a 0.95 target → the SNIPS validation queries replayed.

The teacher is a replay upstream speaking the OpenAI wire format (`insource.testing.fake_upstream`) that answers
each query with the canonical JSON `{"intent": ..., "slots": {...}}` built from SNIPS's slot annotations
(`../shared/data/snips/`, CC0, read at run time). Everything runs through a real `insource serve` and the CLI.
Reports training time, JSON-exact agreement, the share insourced at the target with the agreement delivered,
latency and CPU per student answer (from the gateway's metering) and spend vs all-teacher.

    python bench/snips_extraction.py [--examples 3000] [--target 0.95] [--workdir DIR] [--test-limit N]

`--examples` is the number of training queries replayed (the dataset keeps 80% for train, 10% val, 10% test).
`--workdir DIR` keeps the store, dataset and model there and resumes after the last finished stage.
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench._cascade import cli, replay, spend_by_served, write_config  # noqa: E402
from tests.conftest import start_gateway, stop_gateway  # noqa: E402

from insource.routing.agreement import agree  # noqa: E402
from insource.testing.fake_upstream import FakeUpstream  # noqa: E402
from insource.testing.server import run_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "snips"
TASK = "snips"
INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)
SYSTEM = (
    "Extract the user's intent (one of " + ", ".join(INTENTS) + ") and the slots of the query as JSON: "
    '{"intent": INTENT, "slots": {SLOT: VALUE, ...}}, slot values copied from the query. JSON only.'
)


def canonical(parts: list[dict[str, str]], intent: str) -> tuple[str, str]:
    """(query, teacher answer): slots in query order; a slot named twice keeps its values in a list."""
    text = "".join(p["text"] for p in parts).strip()
    slots: dict[str, Any] = {}
    for p in parts:
        if "entity" not in p:
            continue
        name, value = p["entity"], p["text"].strip()
        if name in slots:
            prev = slots[name]
            slots[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            slots[name] = value
    return text, json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False, separators=(",", ":"))


def load(split: str) -> list[tuple[str, str]]:
    out = []
    for intent in INTENTS:
        name = f"train_{intent}_full.json" if split == "train" else f"validate_{intent}.json"
        rows = json.loads((DATA / name).read_bytes().decode("utf-8", "replace"))[intent]
        out.extend(canonical(r["data"], intent) for r in rows)
    return out


class State:
    """Finished stages of a run, in WORKDIR/state.json (a rerun resumes after the last one)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def __getitem__(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2))


def trim(ds: Path, split: str, limit: int) -> None:
    """Keep the first `limit` examples of a split (0: all): train on fewer than captured, keeping validation whole
    (the Wilson-margin threshold at 0.95 needs ≥ ~60 validation answers), or evaluate on fewer (CPU time)."""
    if not limit:
        return
    for name in (f"{split}.jsonl", f"{split}.examples.jsonl"):
        path = ds / name
        if path.exists():
            path.write_text("".join(path.read_text("utf-8").splitlines(keepends=True)[:limit]), "utf-8")


def learn(config: Path, folder: Path, state: State, target: float, limits: tuple[int, int], epochs: int) -> None:
    """Dataset from the captured traffic, the LoRA student, its eval (json): each stage once."""
    ds = folder / "ds"
    if state["dataset"] is None:
        t0 = time.perf_counter()
        cli(config, "dataset", "build", "--task", TASK, "--out", str(ds), "--split", "random")
        trim(ds, "train", limits[0])
        trim(ds, "test", limits[1])
        state.put("dataset", {"seconds": round(time.perf_counter() - t0, 1), "limits": limits})
    if state["model"] is None:
        t0 = time.perf_counter()
        passes = ["--epochs", str(epochs)] if epochs else []  # 0: the product's default
        out = cli(config, "distill", "--task", TASK, "--student", "lora", "--dataset", str(ds), "--force", *passes)
        state.put("model", {"name": out["model"], "seconds": round(time.perf_counter() - t0, 1), "distill": out})
    if state["eval"] is None:
        t0 = time.perf_counter()
        ev = cli(config, "eval", "--task", TASK, "--model", state["model"]["name"], "--dataset", str(ds),
                 "--target-agreement", str(target), "--metric", "json", ok=(0, 3))  # fmt: skip
        ev.pop("curve", None)
        state.put("eval", {**ev, "seconds": round(time.perf_counter() - t0, 1)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=3000, help="training queries replayed through the gateway")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--train-limit", type=int, default=0, help="train on the first N of the train split (0: all)")
    ap.add_argument("--eval-test-limit", type=int, default=0, help="eval on the first N of the test split (0: all)")
    ap.add_argument("--test-limit", type=int, default=0, help="replay only the first N test queries (0: all 700)")
    ap.add_argument("--epochs", type=int, default=0, help="insource distill --epochs (0: its default)")
    ap.add_argument("--calibrate", type=int, default=0,
                    help="route set --calibrate: 0 (default) routes at eval's validation threshold; N calibrates "
                    "on the first N live queries (the teacher answers them) first")  # fmt: skip
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"missing {DATA}")
    train, test = load("train"), load("validate")
    gold = dict(train) | dict(test)
    rng = random.Random(0)
    rng.shuffle(train)
    rng.shuffle(test)
    train = train[: args.examples]
    test = test[: args.test_limit] if args.test_limit else test
    fake = FakeUpstream(responder=lambda model, messages, body: gold.get(messages[-1]["content"], "{}"))
    handle = run_server(fake)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="snips-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"workdir {folder}", flush=True)
    state = State(folder)
    config = write_config(folder, handle.url)
    gw = start_gateway(config)
    try:
        key = gw.key("bench")["key"]
        if state["replay"] is None:
            t0 = time.perf_counter()
            asyncio.run(replay(gw.base_url, key, TASK, SYSTEM, train))
            state.put("replay", {"n": len(train), "seconds": round(time.perf_counter() - t0, 1)})
            time.sleep(1.5)  # captures written
        learn(config, folder, state, args.target, (args.train_limit, args.eval_test_limit), args.epochs)
        model = state["model"]["name"]
        if state["eval"]["threshold"] is not None:
            cli(config, "route", "set", "--task", TASK, "--model", model, "--mode", "cascade",
                "--target-agreement", str(args.target), "--calibrate", str(args.calibrate))  # fmt: skip
        else:  # no threshold reaches the target on validation: the teacher keeps everything
            print(f"no threshold reaches {args.target} on validation: all traffic stays on the teacher", flush=True)
        time.sleep(1.2)  # the gateway reloads its routes
        before = spend_by_served(config)
        t0 = time.perf_counter()
        results = asyncio.run(replay(gw.base_url, key, TASK, SYSTEM, test, concurrency=1))
        replay_s = time.perf_counter() - t0
        time.sleep(1.5)  # usage records written
        after = spend_by_served(config)
    finally:
        stop_gateway(gw)
        handle.stop()
    state.put("test", {"n": len(results), "seconds": round(replay_s, 1), "results": results})
    report(state, model, results, before, after, args.target, folder)


def _delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: v - before.get(name, {}).get(k, 0.0) for k, v in row.items()}
        for name, row in after.items()
        if row["requests"] - before.get(name, {}).get("requests", 0.0) > 0
    }


def report(
    state: State,
    model: str,
    results: list[dict[str, Any]],
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    target: float,
    folder: Path,
) -> None:
    ev, distill = state["eval"], state["model"]
    metrics = distill["distill"].get("metrics") or {}
    n = len(results)
    student = [r for r in results if r["served_by"] == model]
    ok = [agree("json", r["answer"], r["gold"]) for r in results]
    ok_student = [agree("json", r["answer"], r["gold"]) for r in student]
    spend = _delta(before, after)
    s_row = spend.get(model, {"requests": 0.0, "cost_usd": 0.0, "cost_avoided_usd": 0.0})
    cost = sum(row["cost_usd"] for row in spend.values())
    all_teacher = sum(row["cost_usd"] for name, row in spend.items() if name != model) + s_row["cost_avoided_usd"]
    cpu_per_answer = s_row["cost_usd"] / max(1.0, s_row["requests"]) / (0.10 / 3600.0)
    ms_student = [r["ms"] for r in student]
    ms_teacher = [r["ms"] for r in results if r["served_by"] != model]
    lines = [
        f"SNIPS extraction benchmark ({time.strftime('%Y-%m-%d')}, 2 cores shared, no GPU; workdir {folder})",
        f"teacher traffic replayed through insource serve: {state['replay']['n']} queries in "
        f"{state['replay']['seconds']} s; dataset build {state['dataset']['seconds']} s",
        f"distill --student lora (SmolLM2-135M-Instruct Q4_1 base, r=8): {distill['seconds']} s wall for "
        f"{metrics.get('train_examples')} training examples, {metrics.get('train_tokens')} tokens, "
        f"{metrics.get('steps')} steps, {metrics.get('tokens_per_s')} training tokens/s, "
        f"val loss {metrics.get('loss_before')} -> {metrics.get('loss_after')}",
        f"eval --metric json ({ev['n']} test / {ev['val_n']} val answers, {ev['seconds']} s): JSON-exact agreement "
        f"{ev['agreement']:.2%}; field accuracy {ev.get('field_accuracy')}; threshold {ev['threshold']} for target "
        f"{target}: coverage {ev['coverage_at_threshold']:.1%} at agreement {ev['agreement_at_threshold']}; "
        f"{ev['cpu_s_per_answer']} CPU-s and p50 {ev['latency_ms_p50']} ms per answer in eval",
        f"cascade on the SNIPS validation queries ({n}, concurrency 1): insourced {len(student) / max(1, n):.1%}, "
        f"agreement on student answers {sum(ok_student) / max(1, len(ok_student)):.2%}, end to end "
        f"{sum(ok) / max(1, n):.2%}",
        f"student answers: p50 {_p(ms_student, 50)} ms, p95 {_p(ms_student, 95)} ms (client, through the gateway); "
        f"{cpu_per_answer:.3f} CPU-s each as metered (cost {s_row['cost_usd']:.6f} USD at 0.10 USD/CPU-hour); "
        f"teacher-answered p50 {_p(ms_teacher, 50)} ms (zero-latency replay teacher)",
        f"spend: cascade ${cost:.5f} vs all-teacher ${all_teacher:.5f} ({cost / max(1e-12, all_teacher):.1%})",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / "snips_extraction.md"
    earlier = out.read_text() if out.exists() else ""
    out.write_text("```\n" + text + "\n```\n\n" + earlier)  # the newest run first, the history kept


def _p(values: list[float], q: int) -> str:
    if not values:
        return "n/a"
    return f"{statistics.quantiles(values, n=100)[q - 1]:.0f}" if len(values) > 1 else f"{values[0]:.0f}"


if __name__ == "__main__":
    main()
