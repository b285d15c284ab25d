"""Evaluation metrics: Wilson bound, threshold choice, calibration error, temperature scaling."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest

from insource.distill.fit import fit_temperature, nll
from insource.evals import metrics as M
from insource.registry.head import softmax


def test_wilson_lower_bound_known_values() -> None:
    # 95/100 with z=1.96: the textbook Wilson interval is [0.8882, 0.9785]
    assert abs(M.wilson_lower(95, 100, z=1.96) - 0.8882) < 1e-3
    assert M.wilson_lower(0, 0) == 0.0
    # more evidence at the same rate tightens the bound
    assert M.wilson_lower(990, 1000) > M.wilson_lower(99, 100)


def test_choose_threshold_lowest_that_reaches_target_with_margin() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 5000)
    correct = rng.uniform(0, 1, 5000) < conf  # P(correct | c) = c: calibrated
    t = M.choose_threshold(conf, correct, 0.95)
    assert t is not None
    cov, agr, n = M.at_threshold(conf, correct, t)
    assert agr is not None and M.wilson_lower(int(correct[conf >= t].sum()), n) >= 0.95
    # a slightly lower threshold (next distinct confidence below) must fail the bound
    below = conf[conf < t].max()
    sel = conf >= below
    assert M.wilson_lower(int(correct[sel].sum()), int(sel.sum())) < 0.95
    assert 0.0 < cov < 0.5


def test_choose_threshold_none_when_unreachable_and_ties_kept_together() -> None:
    conf = np.array([0.9, 0.9, 0.8, 0.7])
    correct = np.array([True, False, True, True])
    assert M.choose_threshold(conf, correct, 0.99) is None
    # the two correct 0.9s qualify (Wilson lower bound 0.67 with z=1); adding the wrong 0.5 does not (0.39)
    t = M.choose_threshold(np.array([0.9, 0.9, 0.5]), np.array([True, True, False]), 0.5)
    assert t == 0.9
    assert M.choose_threshold(np.array([0.9, 0.9, 0.5]), np.array([True, True, False]), 0.3) == 0.5


def test_ece_and_reliability() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1, 20000)
    calibrated = rng.uniform(0, 1, 20000) < conf
    overconfident = rng.uniform(0, 1, 20000) < conf - 0.2
    assert M.expected_calibration_error(conf, calibrated) < 0.02
    assert abs(M.expected_calibration_error(conf, overconfident) - 0.2) < 0.03
    bins = M.reliability(conf, calibrated)
    assert len(bins) == M.ECE_BINS and sum(b["n"] for b in bins) == 20000


def test_coverage_curve_is_monotone() -> None:
    rng = np.random.default_rng(2)
    conf = rng.uniform(0, 1, 1000)
    correct = rng.uniform(0, 1, 1000) < conf
    curve = M.coverage_curve(conf, correct)
    covs = [p["coverage"] for p in curve]
    assert covs[0] == 1.0 and all(a >= b for a, b in itertools.pairwise(covs))
    assert set(curve[0]) == {"threshold", "coverage", "agreement"}


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(3)
    n, k = 4000, 5
    true_logits = rng.normal(0, 1.5, (n, k)).astype(np.float32)
    y = np.array([rng.choice(k, p=p) for p in softmax(true_logits)], dtype=np.int64)
    sharp = true_logits * 3.0  # an overconfident model: logits 3x too large
    t = fit_temperature(sharp, y)
    assert 2.4 < t < 3.6
    assert nll(softmax(sharp / t), y) < nll(softmax(sharp), y)


def _result() -> dict[str, object]:
    rng = np.random.default_rng(4)
    conf = rng.uniform(0, 1, 500)
    correct = rng.uniform(0, 1, 500) < conf
    return {
        "model": "intent@v1",
        "split": "test",
        "n": 500,
        "ece": M.expected_calibration_error(conf, correct),
        "curve": M.coverage_curve(conf, correct),
        "reliability": M.reliability(conf, correct),
        "target_agreement": 0.9,
        "threshold": 0.8,
        "coverage_at_threshold": 0.2,
        "agreement_at_threshold": 0.91,
    }


def test_chart_png_and_html_are_written_atomically(tmp_path: Path) -> None:
    from insource.errors import NotReady
    from insource.evals.chart import write_chart

    png = write_chart(_result(), tmp_path / "out" / "eval.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1200, 520)
    html = write_chart(_result(), tmp_path / "eval.html").read_text()
    assert "intent@v1 vs teacher" in html and '<script src="https://cdn' not in html  # JS embedded
    with pytest.raises(NotReady, match=r"\.html or \.png"):
        write_chart(_result(), tmp_path / "eval.svg")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["eval.html", "eval.png", "out"]
