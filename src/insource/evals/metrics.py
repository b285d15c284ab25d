"""Evaluation metrics for students: agreement, calibration, coverage–agreement, threshold choice.

Pure numpy. A threshold `t` means: the student answers when its confidence ≥ t, else it defers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from insource.routing.policy import THRESHOLD_Z
from insource.routing.policy import choose_threshold as choose_on
from insource.routing.policy import examples_needed as examples_needed

FloatArray = npt.NDArray[np.floating[Any]]
BoolArray = npt.NDArray[np.bool_]
ECE_BINS = 15
WILSON_Z = THRESHOLD_Z  # one-sided ≈ 84% confidence that the true agreement reaches the target


def wilson_lower(successes: int, n: int, z: float = WILSON_Z) -> float:
    """Wilson score lower bound of a binomial proportion."""
    if n <= 0:
        return 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def reliability(conf: FloatArray, correct: BoolArray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins with their mean confidence and accuracy (the reliability diagram)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append(
            {
                "lo": round(float(edges[b]), 4),
                "hi": round(float(edges[b + 1]), 4),
                "n": n,
                "confidence": round(float(conf[sel].mean()), 5) if n else None,
                "accuracy": round(float(correct[sel].mean()), 5) if n else None,
            }
        )
    return out


def expected_calibration_error(conf: FloatArray, correct: BoolArray, bins: int = ECE_BINS) -> float:
    if len(conf) == 0:
        return 0.0
    total = 0.0
    for row in reliability(conf, correct, bins):
        if row["n"]:
            total += row["n"] * abs(row["confidence"] - row["accuracy"])
    return total / len(conf)


def at_threshold(conf: FloatArray, correct: BoolArray, threshold: float | None) -> tuple[float, float | None, int]:
    """(coverage, agreement among answered or None, number answered) at `threshold` (None: defer all)."""
    if threshold is None or len(conf) == 0:
        return 0.0, None, 0
    sel = conf >= threshold
    n = int(sel.sum())
    return n / len(conf), (float(correct[sel].mean()) if n else None), n


def coverage_curve(conf: FloatArray, correct: BoolArray, points: int = 101) -> list[dict[str, Any]]:
    curve = []
    for t in np.linspace(0.0, 1.0, points):
        cov, agr, _ = at_threshold(conf, correct, float(t))
        curve.append(
            {
                "threshold": round(float(t), 4),
                "coverage": round(cov, 5),
                "agreement": None if agr is None else round(agr, 5),
            }
        )
    return curve


def choose_threshold(conf: FloatArray, correct: BoolArray, target: float, z: float = WILSON_Z) -> float | None:
    """The lowest confidence threshold whose answered set's Wilson lower bound reaches `target`
    (`routing.policy.choose_threshold`, which a cascade also uses on live traffic). None when none qualifies."""
    return choose_on(conf.tolist(), correct.tolist(), target, z)
