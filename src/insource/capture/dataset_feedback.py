"""Feedback in datasets (`dataset build --feedback MODE`): answers scored negative are dropped, and with
`use-corrections` a corrected answer becomes the example's target instead of the teacher's.

Per captured answer, the latest score and the latest correction count (feedback may be sent several times).

- `exclude-negative`: an answer whose latest score is below 0 is dropped; corrections are not used.
- `use-corrections`: an answer with a correction is kept with the correction as its target (whatever its
  score); the other answers scored below 0 are dropped.

What was done is recorded in the manifest (`feedback`): the mode, how many examples had feedback, how many were
dropped and corrected, and their ids.
"""

from __future__ import annotations

from typing import Any, Literal

from insource.capture.stats import answer_key
from insource.store.feedback_queries import feedback_for_task
from insource.store.sqlite import Row, Store

FeedbackMode = Literal["exclude-negative", "use-corrections"]
MODES: tuple[FeedbackMode, ...] = ("exclude-negative", "use-corrections")


def _latest(rows: list[Row], column: str) -> Any:
    values = [r[column] for r in rows if r[column] is not None]
    return values[-1] if values else None


def apply_feedback(
    store: Store, task: str, examples: list[dict[str, Any]], mode: FeedbackMode
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The examples left (targets corrected where the mode says so) and the manifest's `feedback` entry."""
    by_usage = feedback_for_task(store, task)
    kept: list[dict[str, Any]] = []
    dropped: list[str] = []
    corrected: list[str] = []
    for ex in examples:
        rows = by_usage.get(ex["id"], [])
        correction = _latest(rows, "correction") if mode == "use-corrections" else None
        score = _latest(rows, "score")
        if correction is not None and correction.strip():
            kept.append({**ex, "output": answer_key(correction), "_target": "correction"})
            corrected.append(ex["id"])
        elif score is not None and score < 0:
            dropped.append(ex["id"])
        else:
            kept.append(ex)
    summary = {
        "mode": mode,
        "examples_with_feedback": sum(1 for ex in examples if ex["id"] in by_usage),
        "dropped_negative": len(dropped),
        "corrected": len(corrected),
        "dropped_ids": dropped,
        "corrected_ids": corrected,
    }
    return kept, summary
