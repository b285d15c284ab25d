"""How many validation examples a student needs before its agreement with the teacher can be estimated.

A threshold is chosen on validation with a Wilson lower-bound margin (`evals.metrics.choose_threshold`): with n
validation examples even a perfect student's bound is n / (n + 1), so a target agreement A needs at least
A / (1 − A) of them (99 for 0.99). `insource distill` refuses a smaller validation split rather than train a
student whose agreement nobody can measure; `--force` trains it anyway, and says what it gave up.
"""

from __future__ import annotations

from insource.capture.dataset_read import MIN_VAL_EXAMPLES
from insource.evals.metrics import examples_needed
from insource.routing.policy import RoutePolicy

SHOWN_AGREEMENT = RoutePolicy(task="", model="", mode="shadow").floor  # a route's default rollback floor
COMMON_TARGET = 0.99  # the default --target-agreement of eval and distill --student auto


def _needed(target: float) -> int:
    return max(MIN_VAL_EXAMPLES, examples_needed(min(target, COMMON_TARGET)) or MIN_VAL_EXAMPLES)


def val_requirement(student: str, target: float | None, force: bool) -> tuple[int, str]:
    """(minimum validation examples, what they are needed for) for `insource distill`."""
    if force:
        return 1, "even with --force (one to calibrate on)"
    if student == "lora":
        return MIN_VAL_EXAMPLES, "for calibration (or pass --force)"
    shown = SHOWN_AGREEMENT if target is None else target
    hint = "" if target is not None else f"; --target-agreement {COMMON_TARGET:g} needs {_needed(COMMON_TARGET)}"
    return _needed(shown), (
        f"to estimate agreement: with fewer, even a perfect student cannot be shown to reach agreement {shown:g} "
        f"(Wilson lower bound, z = 1{hint}). Capture more traffic for this task and rebuild the dataset, or pass "
        "--force to train anyway (insource eval will then find no confidence threshold at that agreement)"
    )


def val_warnings(student: str, n_val: int, target: float | None) -> list[str]:
    """What a validation split of `n_val` examples cannot show, said before anyone relies on it."""
    if student == "lora":
        return []
    wanted = COMMON_TARGET if target is None else target
    needed = _needed(wanted)
    if n_val >= needed:
        return []
    return [
        f"the validation split holds {n_val} examples: enough to show agreement up to {n_val / (n_val + 1):.3f} at "
        f"most; agreement {wanted:g} needs {needed} (insource eval --target-agreement {wanted:g} will find no "
        "threshold). Capture more traffic and rebuild the dataset to route at that agreement"
    ]
