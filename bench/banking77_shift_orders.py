"""Banking77 under shift, over many calibration orders: how often a live-calibrated cascade keeps its promise.

One replay (`banking77_shift.py`) is one draw of the requests a cascade calibrates on. This replays the
calibration offline many times: the student `banking77_shift.py --folder DIR` trained predicts every live request
once (as `insource serve` would), then for each random order of the live traffic the first N requests calibrate
the threshold exactly as the route does (`service/promise.live_confidences`, `routing/policy.choose_threshold`) and
the rest are answered at it. Compares the confidences as predicted (catch-all odds 1, the previous release) with
the catch-all's live share learned at calibration.

    python bench/banking77_shift.py --folder DIR    # trains the student once
    python bench/banking77_shift_orders.py --folder DIR [--orders 300] [--calibrate 98]
"""

from __future__ import annotations

import argparse
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
from insource.routing.policy import calibration_samples, choose_threshold, shifted_confidence  # noqa: E402
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


def one_order(rows: list[dict[str, Any]], n: int, target: float, learn_share: bool) -> tuple[float, float, float]:
    """(share insourced of all live, agreement of the student's answers, out-of-scope wrongly insourced); until
    the first `n` requests' samples give a threshold, the route keeps calibrating (checked every 10 requests)."""
    threshold, odds, m = None, 1.0, n
    while threshold is None and m < len(rows):  # until a threshold reaches the target: more traffic, as the route
        calib = rows[max(0, m - 4 * n) : m]  # the most recent 4·N samples (`promise._calibrate`)
        odds, confidences = live_confidences(calib) if learn_share else (1.0, [r["confidence"] for r in calib])
        threshold = choose_threshold(confidences, [r["agree"] for r in calib], target)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", required=True, help="the working folder of a `banking77_shift.py --folder` run")
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("--calibrate", type=int, default=0, help="calibration requests (default: the product's)")
    args = ap.parse_args()
    n = args.calibrate or calibration_samples(args.target)
    _, live, _ = traffic()
    t0 = time.perf_counter()
    rows = predictions(Path(args.folder), live)
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(rows)) for _ in range(args.orders)]
    lines = [
        f"Banking77 under shift over {args.orders} calibration orders ({time.strftime('%Y-%m-%d')}), target "
        f"{args.target}, {n} calibration requests of {len(rows)} live; predictions {time.perf_counter() - t0:.0f} s",
        "",
        "| confidence | insourced (mean / median) | agreement (mean / 10th pct.) | orders below target | "
        "out of scope wrongly insourced (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, learn_share in (("as predicted (previous release)", False), ("catch-all's live share learned", True)):
        r = np.array([one_order([rows[i] for i in o], n, args.target, learn_share) for o in orders])
        lines.append(
            f"| {name} | {r[:, 0].mean():.1%} / {np.median(r[:, 0]):.1%} | {r[:, 1].mean():.2%} / "
            f"{np.quantile(r[:, 1], 0.1):.2%} | {(r[:, 1] < args.target).mean():.0%} | {r[:, 2].mean():.1%} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
