"""Banking77 under shift, over many calibration orders: how often a live-calibrated cascade keeps its promise.

One replay (`banking77_shift.py`) is one draw of the requests a cascade calibrates on. This replays the
calibration offline many times: the student `banking77_shift.py --folder DIR` trained predicts every live request
once (as `insource serve` would), then for each random order of the live traffic the first N requests calibrate
the threshold exactly as the route does (`service/promise.live_confidences`, `routing/policy.choose_threshold`) and
the rest are answered at it. Compares threshold rules (`--rules`: `wilson`, the Wilson margin alone as before;
`live`, the route's `routing/policy.live_threshold`, also bounded by the student's expectation), margins
(`--z`) and calibration sizes (`--calibrate`); `--both` adds the confidences as predicted (catch-all odds 1).

    python bench/banking77_shift.py --folder DIR    # trains the student once
    python bench/banking77_shift_orders.py --folder DIR [--orders 300] [--z 1,1.645] [--calibrate 98,200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from banking77_shift import CATCH_ALL, traffic  # noqa: E402

from insource.config import load_config  # noqa: E402
from insource.registry.entries import load_student  # noqa: E402
from insource.routing.policy import (  # noqa: E402
    THRESHOLD_Z,
    calibration_samples,
    choose_threshold,
    live_threshold,
    shifted_confidence,
)
from insource.service.promise import live_confidences  # noqa: E402


def predictions(folder: Path, live: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each live request as a calibration sample row would keep it (confidence, agree, catch-all fields)."""
    model = json.loads((folder / "learned.json").read_text())[0]
    student = load_student(load_config(folder / "insource.toml").registry_path(), model)
    preds = student.predict([text for text, _ in live])
    rows = []
    for (_, gold), pred in zip(live, preds, strict=True):
        p, label = pred.catch_all or (0.0, CATCH_ALL)
        conf = 0.0 if pred.ood else pred.confidence
        rows.append({"confidence": conf, "agree": pred.answer == gold, "catch_all": p, "answer": pred.answer})
        rows[-1] |= {"student_catch_all": pred.answer == label, "teacher_catch_all": gold == label, "gold": gold}
    return rows


def one_order(
    rows: list[dict[str, Any]], n: int, target: float, learn_share: bool, z: float = THRESHOLD_Z, rule: str = "live"
) -> tuple[float, float, float]:
    """(share insourced of all live, agreement of the student's answers, out-of-scope wrongly insourced); until
    the first `n` requests' samples give a threshold (Wilson margin `z`; `rule` "live": the route's
    `live_threshold`, "wilson": the Wilson margin alone, the previous release), the route keeps calibrating
    (checked every 10 requests)."""
    threshold, odds, m = None, 1.0, n
    while threshold is None and m < len(rows):  # until a threshold reaches the target: more traffic, as the route
        calib = rows[max(0, m - 4 * n) : m]  # the most recent 4·N samples (`promise._calibrate`)
        odds, confidences = live_confidences(calib) if learn_share else (1.0, [r["confidence"] for r in calib])
        choose = live_threshold if rule == "live" else choose_threshold
        threshold = choose(confidences, [r["agree"] for r in calib], target, z)
        m += 10 if threshold is None else 0
    if threshold is None:
        return 0.0, 1.0, 0.0
    served = [
        r
        for r in rows[m:]
        if shifted_confidence(r["confidence"], r["catch_all"], r["student_catch_all"], odds) >= threshold > 0
    ]
    oos = sum(r["gold"] == CATCH_ALL for r in rows)
    wrong = sum(r["gold"] == CATCH_ALL and r["answer"] != CATCH_ALL for r in served)
    agreement = sum(r["agree"] for r in served) / len(served) if served else 1.0
    return len(served) / len(rows), agreement, wrong / max(1, oos)


def summary(name: str, r: np.ndarray, target: float) -> str:
    """One table row from `one_order` results (one row per order)."""
    return (
        f"| {name} | {r[:, 0].mean():.1%} / {np.median(r[:, 0]):.1%} | {r[:, 1].mean():.2%} / "
        f"{np.quantile(r[:, 1], 0.1):.2%} | {(r[:, 1] < target).mean():.0%} | {r[:, 2].mean():.1%} |"
    )


def ceiling(rows: list[dict[str, Any]], target: float) -> tuple[float, float]:
    """(lowest threshold, share of all live requests it insources) that still reaches `target` on every live
    request, confidences re-weighted by the catch-all's odds fitted on all of them (a perfect calibration)."""
    _, conf = live_confidences(rows)
    pairs = sorted(zip(conf, (r["agree"] for r in rows), strict=True), key=lambda p: -p[0])
    best, hits = (1.0, 0.0), 0
    for i, (c, agree) in enumerate(pairs):
        hits += bool(agree)
        if c > 0 and hits / (i + 1) >= target and (i + 1 == len(pairs) or pairs[i + 1][0] < c):
            best = (c, (i + 1) / len(rows))
    return best


def cached_predictions(folder: Path, live: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """`predictions`, kept in the folder (`live_rows.json`) after the first run."""
    path = folder / "live_rows.json"
    if path.exists():
        return list(json.loads(path.read_text()))
    rows = predictions(folder, live)
    path.write_text(json.dumps(rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", required=True, help="the working folder of a `banking77_shift.py --folder` run")
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("--calibrate", default="0", help="comma-separated calibration sizes (0: the product's)")
    ap.add_argument("--z", default=str(THRESHOLD_Z), help="comma-separated Wilson margins of the threshold")
    ap.add_argument("--both", action="store_true", help="also the confidences as predicted (previous release)")
    ap.add_argument("--rules", default="wilson,live", help="threshold rules: wilson (previous release), live")
    args = ap.parse_args()
    _, live, _ = traffic()
    t0 = time.perf_counter()
    folder = Path(args.folder)
    rows = cached_predictions(folder, live)
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(rows)) for _ in range(args.orders)]
    student = json.loads((folder / "learned.json").read_text())[0]
    threshold, share = ceiling(rows, args.target)
    lines = [
        f"Banking77 under shift over {args.orders} calibration orders ({time.strftime('%Y-%m-%d')}), target "
        f"{args.target}, {student} from {folder.name}, {len(rows)} live requests; predictions "
        f"{time.perf_counter() - t0:.0f} s; ceiling (all live requests): threshold {threshold:.3f}, {share:.1%}",
        "",
        "| threshold rule: confidence, margin z, calibration requests | insourced (mean / median) | "
        "agreement (mean / 10th pct.) | orders below target | out of scope wrongly insourced (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    kinds = (("as predicted", False), ("live share", True)) if args.both else (("live share", True),)
    sizes = [int(v) or calibration_samples(args.target) for v in args.calibrate.split(",")]
    for rule, z, n in itertools.product(args.rules.split(","), [float(v) for v in args.z.split(",")], sizes):
        for name, learn_share in kinds:
            r = np.array([one_order([rows[i] for i in o], n, args.target, learn_share, z, rule) for o in orders])
            lines.append(summary(f"{rule}: {name}, z {z:g}, {n}", r, args.target))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
