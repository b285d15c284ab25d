"""Banking77 under shift: out-of-scope requests are 3% of the traffic a student learns from, 18% after the switch.

17 of the 77 intents are out of scope: the replay teacher answers `other` for them. Training traffic (replayed
through `insource serve`): Banking77 train, the out-of-scope part cut to 3%. Live traffic: Banking77 test, the
out-of-scope part 18%. A cascade is set with `--target-agreement` (the product's defaults otherwise) and the
live traffic replayed through it. Reports share insourced, the agreement of the student's answers, the share
of out-of-scope requests wrongly insourced (answered by the student with an in-scope label), audits used.
`--old` repeats the live run with the same student under the previous release's scope rules (best cosine to a
training input below the 0.5% validation quantile minus 0.03; no catch-all rule), for comparison.

    python bench/banking77_shift.py [--target 0.98] [--old] [--calibrate 0,500] [--folder DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from banking77_cascade import DATA, TASK, cli, learn, load, prompt, replay, write_config  # noqa: E402
from tests.conftest import Gateway, start_gateway, stop_gateway  # noqa: E402

from insource.config import load_config  # noqa: E402
from insource.store import open_store  # noqa: E402
from insource.testing.fake_upstream import FakeUpstream  # noqa: E402
from insource.testing.server import run_server  # noqa: E402

OUT_OF_SCOPE_INTENTS = 17
TRAIN_SHARE, LIVE_SHARE = 0.03, 0.18
CATCH_ALL = "other"


def traffic(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]], set[str]]:
    """(training traffic, live traffic, out-of-scope intents); answers are the teacher's (`other` out of scope)."""
    rng = random.Random(seed)
    train, test = load("train"), load("test")
    out = set(rng.sample(sorted({c for _, c in train}), OUT_OF_SCOPE_INTENTS))

    def mixed(rows: list[tuple[str, str]], share: float) -> list[tuple[str, str]]:
        rows = rows[:]
        rng.shuffle(rows)
        inside = [(t, c) for t, c in rows if c not in out]
        outside = [(t, CATCH_ALL) for t, c in rows if c in out][: round(share / (1 - share) * len(inside))]
        both = inside + outside
        rng.shuffle(both)
        return both

    return mixed(train, TRAIN_SHARE), mixed(test, LIVE_SHARE), out


def old_scope(config: Path, model: str, dataset: Path) -> None:
    """Give the registered student `model` the previous release's scope rules (same weights otherwise)."""
    from insource.capture.dataset_read import load_dataset
    from insource.registry.embedding import embed_examples, encoder_cache
    from insource.registry.encoder import OnnxEncoder
    from insource.registry.entries import MODEL_FILE, read_model_info, write_json_atomic
    from insource.registry.head import Head

    cfg = load_config(config)
    folder = cfg.registry_path() / model
    val = load_dataset(dataset).split("val")
    val_x = embed_examples(OnnxEncoder(folder), encoder_cache(cfg.registry_path() / ".cache", folder), val)
    head = Head.load(folder)
    best = (val_x @ head.train_vectors.T).max(axis=1)
    head.ood_k, head.catch_all, head.catch_all_shift = 1, -1, 1.0
    head.ood_threshold = float(np.quantile(best, 0.005) - 0.03)
    head.save(folder)  # same array shapes: the registered file sizes still hold
    info = read_model_info(folder)
    info["head"] = {**info["head"], "ood_threshold": round(head.ood_threshold, 4), "catch_all": None, "ood": None}
    write_json_atomic(folder / MODEL_FILE, info)


def audits(config: Path, model: str, since: float) -> dict[str, int]:
    """Comparisons with the teacher recorded for `model` since `since`, by source (calibration, audit...)."""
    store = open_store(load_config(config))
    try:
        rows = store.query(
            "SELECT source, COUNT(*) AS n FROM agreements WHERE task = ? AND model = ? AND ts >= ? GROUP BY source",
            (TASK, model, since),
        )
    finally:
        store.close()
    return {str(r["source"]): int(r["n"]) for r in rows}


def run_live(
    gw: Gateway, key: str, config: Path, model: str, live: list[tuple[str, str]], target: float, calibrate: str
) -> Any:
    """Set the cascade (`calibrate`: "default" leaves the product's default) and replay the live traffic."""
    since = time.time()
    extra = () if calibrate == "default" else ("--calibrate", calibrate)
    route = ("route", "set", "--task", TASK, "--model", model, "--mode", "cascade", "--target-agreement", str(target))
    cli(config, *route, *extra)
    time.sleep(1.2)  # workers apply a route within a second
    results = asyncio.run(replay(gw.base_url, key, TASK, prompt(), live, concurrency=8))
    time.sleep(1.5)  # audits finish in the background
    shown = next(r for r in cli(config, "route", "show") if r["task"] == TASK)
    return results, shown, audits(config, model, since)


def figures(results: list[dict[str, Any]], model: str) -> dict[str, Any]:
    student = [r for r in results if r["served_by"] == model]
    oos = [r for r in results if r["gold"] == CATCH_ALL]
    oos_student = [r for r in oos if r["served_by"] == model]
    first = next((i for i, r in enumerate(results) if r["served_by"] == model), len(results))
    after = results[first:]  # once the route answers (a calibrating cascade first lets the teacher answer)
    return {
        "requests": len(results),
        "out_of_scope": len(oos),
        "insourced": len(student) / len(results),
        "student_agreement": sum(r["answer"] == r["gold"] for r in student) / max(1, len(student)),
        "end_to_end_agreement": sum(r["answer"] == r["gold"] for r in results) / len(results),
        "oos_insourced": len(oos_student) / max(1, len(oos)),
        "oos_wrongly_insourced": sum(r["answer"] != CATCH_ALL for r in oos_student) / max(1, len(oos)),
        "student_answers": len(student),
        "insourced_once_answering": sum(r["served_by"] == model for r in after) / max(1, len(after)),
        "teacher_before_first_answer": first,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("--old", action="store_true", help="also run the previous release's scope rules")
    ap.add_argument(
        "--calibrate", default="default", help="comma-separated --calibrate values to run (default: the product's)"
    )
    ap.add_argument("--folder", help="working folder; a student trained there by an earlier run is reused")
    ap.add_argument("--student", default="classifier", help="distill --student (classifier | classifier-strong)")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"missing {DATA}")
    train, live, out = traffic()
    answers = dict(train) | dict(live)
    fake = FakeUpstream(responder=lambda model, messages, body: answers.get(messages[-1]["content"], "unknown"))
    handle = run_server(fake)
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="b77-shift-"))
    folder.mkdir(parents=True, exist_ok=True)
    learned = folder / "learned.json"  # a student trained by an earlier run with this --folder: reused
    print(f"working folder {folder}", file=sys.stderr)
    config = write_config(folder, handle.url)
    gw = start_gateway(config)
    runs: dict[str, Any] = {}
    try:
        key = gw.key("bench")["key"]
        if learned.exists():
            model, ev, learn_s = json.loads(learned.read_text())
        else:
            asyncio.run(replay(gw.base_url, key, TASK, prompt(), train))
            time.sleep(1.0)
            model, ev, learn_s = learn(config, folder, args.target, args.student)
            learned.write_text(json.dumps([model, ev, learn_s]))
        info = cli(config, "models", "show", model)
        for calibrate in args.calibrate.split(","):
            runs[f"new, calibrate {calibrate}"] = (
                model,
                ev,
                *run_live(gw, key, config, model, live, args.target, calibrate),
            )
        if args.old:
            old_model = cli(config, "distill", "--task", TASK, "--dataset", str(folder / "ds"))["model"]
            old_scope(config, old_model, folder / "ds")
            old_ev = cli(
                config,
                "eval",
                "--task",
                TASK,
                "--model",
                old_model,
                "--dataset",
                str(folder / "ds"),
                "--target-agreement",
                str(args.target),
            )
            runs["old"] = (old_model, old_ev, *run_live(gw, key, config, old_model, live, args.target, "default"))
    finally:
        stop_gateway(gw)
        handle.stop()
    report(runs, info, out, train, live, args.target, learn_s)


def report(
    runs: dict[str, Any],
    info: dict[str, Any],
    out: set[str],
    train: list[tuple[str, str]],
    live: list[tuple[str, str]],
    target: float,
    learn_s: float,
) -> None:
    n_train_oos = sum(c == CATCH_ALL for _, c in train)
    lines = [
        f"Banking77 under shift ({time.strftime('%Y-%m-%d')}, 2 cores, no GPU), target agreement {target}",
        f"out of scope ({len(out)} intents, teacher answers `{CATCH_ALL}`): {sorted(out)}",
        f"training traffic {len(train)} requests ({n_train_oos / len(train):.1%} out of scope); live "
        f"{len(live)} ({sum(c == CATCH_ALL for _, c in live) / len(live):.1%} out of scope); learn {learn_s:.0f} s",
        f"student scope record: {json.dumps({k: info['head'].get(k) for k in ('ood_threshold', 'ood', 'catch_all')})}",
        "",
        "| scope rules | insourced | insourced once answering | agreement (student answers) | end to end | "
        "out of scope insourced | out of scope wrongly insourced | audits / student answers | other comparisons | "
        "route state |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, (model, ev, results, route, counts) in runs.items():
        f = figures(results, model)
        audited = counts.get("audit", 0)
        others = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "audit") or "none"
        lines.append(
            f"| {name} ({model}, eval threshold {ev['threshold']}) | {f['insourced']:.1%} | "
            f"{f['insourced_once_answering']:.1%} (after {f['teacher_before_first_answer']}) | "
            f"{f['student_agreement']:.2%} | {f['end_to_end_agreement']:.2%} | {f['oos_insourced']:.1%} | "
            f"{f['oos_wrongly_insourced']:.1%} | {audited} / {f['student_answers']} "
            f"({audited / max(1, f['student_answers']):.1%}) | {others} | "
            f"{route.get('state')} |"
        )
    for name, (_model, _ev, _results, route, _counts) in runs.items():
        history = [(t.get("threshold"), t.get("reason")) for t in route.get("thresholds") or []]
        lines.append(
            f"{name}: route show: state {route.get('state')}, live agreement {route.get('live_agreement')} "
            f"(lower bound {route.get('live_agreement_low')}), coverage {route.get('coverage')}, thresholds {history}"
        )
    lines += [
        "",
        "Targets: agreement ≥ 0.98 on the student's answers, ≤ 5% of out-of-scope requests wrongly insourced, "
        "≥ 75% of live traffic insourced, audits ≤ 5% of the student's answers.",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "banking77_shift.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
