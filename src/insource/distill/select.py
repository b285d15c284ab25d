"""`insource distill --student auto`: score registered candidates on validation and pick the winner.

Each candidate is scored on the dataset's validation split only (never test) with the threshold choice the
evaluation uses: the lowest confidence threshold whose Wilson lower bound reaches the target agreement. The
candidate answering the largest share of validation traffic at that threshold wins; a tie goes to the first
candidate (the default, cheaper student).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from insource.capture.dataset_read import Dataset
from insource.errors import NotReady
from insource.evals import metrics as M
from insource.registry.entries import MODEL_FILE, read_model_info, write_json_atomic

AUTO_STUDENTS = ("classifier", "classifier-strong")


def check_target(target: float) -> float:
    if not 0.0 < target <= 1.0:
        raise NotReady(f"--target-agreement must be in (0, 1], got {target}")
    return target


def val_at_target(folder: Path, cache_root: Path, ds: Dataset, target: float) -> dict[str, Any]:
    """Validation coverage and agreement of the registered student in `folder` at its target threshold."""
    from insource.evals.run import score_splits

    val = ds.split("val")
    if not val:
        raise NotReady(f"the val split of {ds.path} is empty: --student auto picks on validation")
    (scored,) = score_splits(folder, cache_root, val)
    threshold = M.choose_threshold(scored.conf, scored.correct, target)
    coverage, agreement, _answered = M.at_threshold(scored.conf, scored.correct, threshold)
    return {
        "threshold": None if threshold is None else round(threshold, 6),
        "val_coverage_at_target": round(coverage, 5),
        "val_agreement_at_threshold": None if agreement is None else round(agreement, 5),
    }


def pick(candidates: list[dict[str, Any]]) -> int:
    """Index of the candidate with the highest validation coverage at the target (ties: the earliest)."""
    if not candidates:
        raise NotReady("no candidate student to choose from")
    best = 0
    for i, cand in enumerate(candidates):
        if cand["val_coverage_at_target"] > candidates[best]["val_coverage_at_target"]:
            best = i
    return best


def record_choice(folder: Path, winner: dict[str, Any], others: list[dict[str, Any]], target: float) -> None:
    """Note in the winner's model.json which candidates it was selected over (atomic replace)."""
    info = read_model_info(folder)
    info["selection"] = {
        "target_agreement": target,
        "split": "val",
        "val_coverage_at_target": winner["val_coverage_at_target"],
        "val_agreement_at_threshold": winner["val_agreement_at_threshold"],
        "threshold": winner["threshold"],
    }
    info["selected_over"] = [
        {k: c[k] for k in ("model", "student", "val_coverage_at_target", "val_agreement_at_threshold", "threshold")}
        for c in others
    ]
    write_json_atomic(folder / MODEL_FILE, info)
