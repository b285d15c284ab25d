"""Fit the classifier head on embeddings: logistic regression, temperature scaling, OOD threshold, kNN mix.

Everything is chosen on the validation split; the test split is never looked at here. What is out of scope
(the OOD threshold, the catch-all label) is chosen in `scope.py`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from insource.distill.scope import OOD_ALPHA, OOD_K, catch_all_info, ood_threshold
from insource.registry.head import Head, Matrix, mix, softmax
from insource.registry.progress import Step

IntArray = npt.NDArray[np.int64]
C_GRID = (16.0,)  # chosen on Banking77 val (4 and 64 were worse); one fit keeps retraining fast
KNN_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
LEXICAL_WEIGHTS = (0.0, 0.2, 0.35, 0.5, 0.65)


def nll(probs: Matrix, y: IntArray) -> float:
    ok = y >= 0
    if not ok.any():
        return 0.0
    p = probs[ok, y[ok]]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def fit_temperature(logits: Matrix, y: IntArray) -> float:
    """Temperature minimising validation NLL (golden-section search on log T)."""
    if not (y >= 0).any():
        return 1.0
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(softmax(logits / math.exp(log_t)), y)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def aurc(conf: Matrix, correct: npt.NDArray[np.bool_]) -> float:
    """Area under the risk–coverage curve (lower is better): the mean error rate of every top-k prefix."""
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)
    return float(errors.mean()) if len(errors) else 0.0


def _fit_lr(x: Matrix, y: IntArray, n_classes: int, c: float) -> tuple[Matrix, Matrix]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    weights = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)
    classes = clf.classes_.astype(np.int64)
    if len(classes) == 2:  # binary: scikit-learn keeps one row; expand to two symmetric logits
        coef = np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
        icpt = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    else:
        coef, icpt = clf.coef_, clf.intercept_
    weights[classes] = coef
    bias[classes] = icpt
    return weights, bias


def _scoped(head: Head, labels: list[str] | None, val_sims: Matrix) -> dict[str, Any]:
    """Set the head's OOD rule (conformal, on validation) and catch-all (see `scope.py`); returns the record."""
    head.ood_k = OOD_K
    head.ood_threshold = ood_threshold(head.nearness(val_sims))
    index, shift, record = catch_all_info(labels or [], head.train_vectors, head.train_labels)
    head.catch_all, head.catch_all_shift = index, shift
    return {
        "ood_threshold": round(head.ood_threshold, 4),
        "ood": {"score": f"mean cosine to the {OOD_K} nearest training inputs", "k": OOD_K, "alpha": OOD_ALPHA},
        "catch_all": record,
    }


def fit_head(
    train_x: Matrix,
    train_y: IntArray,
    val_x: Matrix,
    val_y: IntArray,
    n_classes: int,
    *,
    knn: bool = False,
    val_lexical: Matrix | None = None,
    labels: list[str] | None = None,
    step: Step | None = None,
) -> tuple[Head, dict[str, Any]]:
    """Fit and calibrate a head; `val_y` is -1 where the teacher's answer never occurs in training.

    The kNN weight and (with `val_lexical`, the lexical view's validation probabilities) the lexical weight
    are chosen together: the pair with the smallest validation risk–coverage area wins. `labels` (the answers, by
    index) let the catch-all be found by name (see `scope.py`).
    """
    best: tuple[float, Head, dict[str, Any]] | None = None
    lexical_weights = LEXICAL_WEIGHTS if val_lexical is not None else (0.0,)
    for c in C_GRID:
        if step:
            step(f"logistic regression C={c:g}")
        w, b = _fit_lr(train_x, train_y, n_classes, c)
        head = Head(w, b, 1.0, train_x, train_y, 0.0)
        head.temperature = fit_temperature(head.logits(val_x), val_y)
        logits, sims = head.scores(val_x)
        scope = _scoped(head, labels, sims)
        base = softmax(logits / head.temperature)
        knn_probs = head.knn_proba(sims) if knn else None
        for kw in KNN_WEIGHTS if knn else (0.0,):
            for lw in lexical_weights:
                probs = mix(base, knn_probs, kw, val_lexical, lw)
                score = aurc(probs.max(axis=1), probs.argmax(axis=1) == val_y)
                if best is None or score < best[0]:
                    chosen = replace(head, knn_weight=kw, lexical_weight=lw)
                    info = {
                        "C": c,
                        "temperature": round(head.temperature, 4),
                        "knn_weight": kw,
                        "lexical_weight": lw,
                        "val_aurc": round(score, 5),
                        **scope,
                    }
                    best = (score, chosen, info)
    assert best is not None
    return best[1], best[2]
