"""What is out of the student's scope: the OOD threshold and the teacher's catch-all label.

Both are chosen at distill time from the training and validation splits only (see `registry/head.py` for how
serving uses them).

**Unlike the training traffic.** The OOD score of an input is its mean cosine similarity to its `OOD_K` nearest
training inputs in the encoder's space. The validation inputs were held out from training, so their scores are
exchangeable with those of live inputs drawn like the training traffic: flagging a score below the
⌊α(n+1)⌋-th smallest validation score (split conformal, α = `OOD_ALPHA`) sends at most α of such inputs to the
teacher, and every input less like the training traffic than that, whatever the head's confidence.

**The catch-all.** A label the teacher answers for whatever is outside the task (`other`, `none`,
`out_of_scope`...). It is recognised by its name (`CATCH_ALL_NAMES`, after lower-casing and turning `-`, `_`,
`/` into spaces) or, failing that, by how widely its training inputs are spread: for unit vectors, the squared
norm of a label's mean embedding is the mean cosine similarity between its inputs; a label whose value is more
than `SPREAD_MADS` median absolute deviations below the median label's is a bag of unrelated requests. Its share
of live traffic can grow well beyond its training share (a product launches a feature), while the head learned
its probabilities at the training share. So an in-scope answer goes to the teacher when one of the input's
nearest training inputs carries the catch-all (the teacher called a request just like it out of scope), or when
the catch-all would be at least as likely as the answer if its share grew to `CATCH_ALL_LIVE_SHARE` (its odds
multiplied by the ratio of the two shares' odds: Bayes' rule under label shift). The catch-all itself gets no
such boost: it is answered only at its own probability, against the same threshold as any other label. Both are
flags, not a rescaled confidence, so the threshold `insource eval` chooses keeps its meaning. Mistaking a broad
ordinary label for a catch-all only makes the student defer more, never answer more.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

OOD_K = 10
OOD_ALPHA = 0.01
OOD_MARGIN = 0.03  # too little validation for the α quantile: the lowest validation score minus this margin
CATCH_ALL_NAMES = frozenset(
    {
        "other",
        "others",
        "none",
        "unknown",
        "out of scope",
        "oos",
        "misc",
        "miscellaneous",
        "irrelevant",
        "not applicable",
        "n a",
        "no intent",
        "unclassified",
        "uncategorized",
        "unrelated",
    }
)
SPREAD_MADS = 5.0
SPREAD_MIN_LABELS = 5  # the median and its deviation need a few labels
SPREAD_MIN_EXAMPLES = 5
CATCH_ALL_LIVE_SHARE = 0.4


def ood_threshold(val_scores: Matrix, alpha: float = OOD_ALPHA) -> float:
    """The split-conformal cut: the ⌊α(n+1)⌋-th smallest validation score (the lowest minus a margin when the
    split is too small for α; 0 with no validation at all, as before)."""
    if not len(val_scores):
        return 0.0
    ranked = np.sort(np.asarray(val_scores, dtype=np.float64))
    j = int(np.floor(alpha * (len(ranked) + 1)))
    if j < 1:
        return float(ranked[0] - OOD_MARGIN)
    return float(ranked[j - 1])


def _normalised(label: str) -> str:
    return " ".join(re.sub(r"[-_/.]+", " ", label.lower()).split())


def _spreads(train_x: Matrix, train_y: IntArray, n_labels: int) -> dict[int, float]:
    """Mean pairwise cosine similarity (squared norm of the mean embedding) of each well-supported label."""
    out = {}
    for c in range(n_labels):
        rows = train_x[train_y == c]
        if len(rows) >= SPREAD_MIN_EXAMPLES:
            centre = rows.mean(axis=0)
            out[c] = float(centre @ centre)
    return out


def find_catch_all(labels: list[str], train_x: Matrix, train_y: IntArray) -> tuple[int, dict[str, Any]] | None:
    """(index, how it was recognised) of the catch-all label, or None when the task has none."""
    spreads = _spreads(train_x, train_y, len(labels))
    named = [i for i, label in enumerate(labels) if _normalised(label) in CATCH_ALL_NAMES]
    values = np.array(list(spreads.values()))
    median = float(np.median(values)) if len(values) else 0.0
    mad = float(np.median(np.abs(values - median))) if len(values) else 0.0
    why: dict[str, Any] = {"spread": None, "median_spread": round(median, 4)}
    if named:
        index = max(named, key=lambda i: int((train_y == i).sum()))
        why["reason"] = "name"
    elif len(spreads) >= SPREAD_MIN_LABELS and mad > 0:
        index = min(spreads, key=lambda c: spreads[c])
        if spreads[index] >= median - SPREAD_MADS * mad:
            return None
        why["reason"] = f"spread (over {SPREAD_MADS:g} deviations below the median label's)"
    else:
        return None
    if index in spreads:
        why["spread"] = round(spreads[index], 4)
    return index, why


def catch_all_shift(train_share: float, live_share: float = CATCH_ALL_LIVE_SHARE) -> float:
    """How much the catch-all's odds may grow: from its training share to `live_share` (never below 1)."""
    if train_share <= 0.0 or train_share >= live_share:
        return 1.0
    return (live_share / (1.0 - live_share)) / (train_share / (1.0 - train_share))


def catch_all_info(labels: list[str], train_x: Matrix, train_y: IntArray) -> tuple[int, float, dict[str, Any] | None]:
    """(catch-all index or -1, its odds shift, what model.json records about it)."""
    found = find_catch_all(labels, train_x, train_y)
    if found is None:
        return -1, 1.0, None
    index, why = found
    share = float((train_y == index).mean()) if len(train_y) else 0.0
    shift = catch_all_shift(share)
    record = {
        "label": labels[index],
        **why,
        "train_share": round(share, 5),
        "live_share_allowed": CATCH_ALL_LIVE_SHARE,
        "odds_shift": round(shift, 4),
    }
    return index, shift, record
