"""Insourcing policies: pure decisions about who answers a request, and the rollback rule."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

Mode = Literal["shadow", "canary", "cascade", "full"]
MODES: tuple[str, ...] = ("shadow", "canary", "cascade", "full")


class Answerer(Enum):
    TEACHER = "teacher"
    STUDENT = "student"


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    task: str
    model: str
    mode: Mode
    percent: float = 0.0  # canary share, 0..100
    threshold: float | None = None  # cascade confidence threshold
    target_agreement: float | None = None
    audit_rate: float = 0.0  # share of student answers also sent to the teacher, 0..1
    floor: float = 0.9  # roll back when the agreement's Wilson lower bound falls below this
    active: bool = True
    since: float = 0.0  # when this policy was set (0: a config route): comparisons before it do not count
    calibrate: int = 0  # cascade with a target: live requests the student predicts in shadow before it answers
    calibrating: bool = False  # no threshold chosen on live traffic yet: the teacher answers, the student predicts
    threshold_since: float = 0.0  # when the live threshold last changed: the floor judges answers served since
    catch_all_odds: float = 1.0  # the catch-all's live odds over those it was trained at (chosen at calibration)


@dataclass(frozen=True, slots=True)
class Decision:
    answerer: Answerer
    predict: bool  # whether the student must predict at all
    audit: bool  # whether the teacher must also answer, for comparison


def needs_prediction(policy: RoutePolicy, draw: float) -> bool:
    """Whether the student must predict for this request (`draw` uniform in [0, 1))."""
    if not policy.active:
        return False
    if policy.mode == "canary":
        return draw * 100.0 < policy.percent
    return True


def decide(
    policy: RoutePolicy, threshold: float, confidence: float | None, ood: bool, draws: tuple[float, float]
) -> Decision:
    """Who answers. `confidence` is None when the student failed; `draws` are two uniform numbers."""
    if not policy.active:
        return Decision(Answerer.TEACHER, False, False)
    pick, audit_draw = draws
    student_ok = confidence is not None
    if policy.mode == "shadow" or (policy.mode == "cascade" and policy.calibrating):
        return Decision(Answerer.TEACHER, True, student_ok)
    if policy.mode == "canary":
        chosen = pick * 100.0 < policy.percent and student_ok
    elif policy.mode == "cascade":
        chosen = student_ok and not ood and confidence is not None and confidence >= threshold
    else:  # full
        chosen = student_ok
    if not chosen:
        return Decision(Answerer.TEACHER, student_ok, False)
    return Decision(Answerer.STUDENT, True, audit_draw < policy.audit_rate)


def _wilson(successes: int, n: int, z: float, sign: float) -> float:
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + sign * margin) / denom


def wilson_lower(successes: int, n: int, z: float = 1.96) -> float:
    """Lower bound of the Wilson score interval for a proportion (0 when nothing is known)."""
    return _wilson(successes, n, z, -1.0) if n > 0 else 0.0


def wilson_upper(successes: int, n: int, z: float = 1.96) -> float:
    """Upper bound of the Wilson score interval for a proportion (1 when nothing is known)."""
    return _wilson(successes, n, z, 1.0) if n > 0 else 1.0


@functools.cache
def min_samples(floor: float, cap: int = 100_000) -> int:
    """How many comparisons the lower-bound verdict needs: enough that a student agreeing halfway between the
    floor and perfect would have its Wilson lower bound clear the floor.

    Before that, a sound student's lower bound can sit below the floor from one unlucky disagreement (a
    noisy teacher makes some), so the bound has not yet "fallen" below anything: judging earlier would roll
    back good students at random.
    """
    p = (1.0 + floor) / 2.0
    n = 1
    while n < cap and wilson_lower(math.ceil(p * n), n) < floor:
        n = max(n + 1, int(n * 1.05))
    return n


MIN_COMPARISONS = 20  # no verdict at all on fewer comparisons
CLEAR_Z = 3.0  # "clearly below the floor": even a 99.9% upper bound is under it


def should_roll_back(successes: int, n: int, floor: float, min_n: int = MIN_COMPARISONS) -> bool:
    """Roll back when the agreement is below the floor: at once when it is clearly below (the upper bound
    at z=3 is under the floor, after `min_n` comparisons: a broken or drifted student goes within a few
    dozen audits), otherwise when the Wilson lower bound falls below it once `min_samples(floor)`
    comparisons make that bound mean something.

    A sound student (agreeing halfway between the floor and perfect) almost never trips the first rule: in
    simulation it did so in under 0.5% of runs at floors 0.8-0.95, and 1.5% at 0.99 over its 1,170 checks.
    """
    if n < min_n:
        return False
    if wilson_upper(successes, n, CLEAR_Z) < floor:
        return True
    return n >= min_samples(floor) and wilson_lower(successes, n) < floor


# -- a cascade's promise: its threshold chosen and kept on live traffic ----------------------------------------------
THRESHOLD_Z = 1.0  # the threshold's margin: one-sided ≈ 84% confidence that the agreement reaches the target


def examples_needed(target: float, z: float = THRESHOLD_Z) -> int | None:
    """Examples a perfect student needs before its agreement can be shown to reach `target`: its Wilson lower
    bound is n / (n + z²), so n ≥ z²·target / (1 − target). None when no size will do (target 1)."""
    if target >= 1.0:
        return None
    return max(1, math.ceil(z * z * target / (1.0 - target) - 1e-9))


def choose_threshold(
    confidences: Sequence[float], agrees: Sequence[bool], target: float, z: float = THRESHOLD_Z
) -> float | None:
    """The lowest confidence threshold whose answered set (confidence ≥ t) has a Wilson lower bound reaching
    `target`, scanning every distinct confidence above 0; None when no threshold qualifies. `insource eval`
    chooses on the validation split with it, a cascade on live traffic."""
    pairs = sorted(zip(confidences, agrees, strict=True), key=lambda pair: -pair[0])
    best: float | None = None
    hits = 0
    for i, (conf, agree) in enumerate(pairs):
        hits += bool(agree)
        if i + 1 < len(pairs) and pairs[i + 1][0] == conf:
            continue  # inputs with the same confidence are answered together
        if conf <= 0.0:
            break
        if wilson_lower(hits, i + 1, z) >= target:
            best = float(conf)
    return best


def expected_threshold(confidences: Sequence[float], target: float) -> float | None:
    """The lowest confidence threshold whose answered set's mean confidence (the agreement the student itself
    expects there) reaches `target`; None when none does. Unlike `choose_threshold` it needs no labels, so it
    does not move with which few disagreements a small sample happened to contain."""
    ranked = sorted((c for c in confidences if c > 0.0), reverse=True)
    best: float | None = None
    total = 0.0
    for i, conf in enumerate(ranked):
        total += conf
        if i + 1 < len(ranked) and ranked[i + 1] == conf:
            continue
        if total / (i + 1) >= target:
            best = float(conf)
    return best


def live_threshold(
    confidences: Sequence[float], agrees: Sequence[bool], target: float, z: float = THRESHOLD_Z
) -> float | None:
    """A calibrating cascade's threshold: the higher of what its live samples show (`choose_threshold`, the
    Wilson margin) and what the student's confidences expect (`expected_threshold`); None until both exist.

    On ~100 samples the first alone is often set by luck: a stretch of confidences where the student expects a
    few disagreements held none in this sample, and the threshold lands where the agreement is below the target
    (a quarter of random calibration orders on `bench/banking77_shift_orders.py`); the second vetoes that, and
    the first still guards against a student whose confidences promise more than the teacher agrees with."""
    shown = choose_threshold(confidences, agrees, target, z)
    expected = expected_threshold(confidences, target)
    return None if shown is None or expected is None else max(shown, expected)


def calibration_samples(target: float) -> int:
    """Live requests a cascade calibrates on by default: twice what a perfect student needs to show `target`
    (room for the requests a threshold defers), and at least MIN_COMPARISONS."""
    return max(MIN_COMPARISONS, 2 * (examples_needed(min(target, 0.999)) or 0))


def promise_broken(successes: int, n: int, target: float) -> bool:
    """Whether audited answers show the agreement below the promised `target`: clearly below (the z=3 upper
    bound under it) after MIN_COMPARISONS audits, or the threshold's own lower bound (z=THRESHOLD_Z) under it
    once `min_samples(target)` audits make that bound mean something. The same margin the threshold was chosen
    with, so a threshold just raised on some evidence is not raised again on that same evidence."""
    if n < MIN_COMPARISONS:
        return False
    if wilson_upper(successes, n, CLEAR_Z) < target:
        return True
    return n >= min_samples(target) and wilson_lower(successes, n, THRESHOLD_Z) < target


def raised_threshold(
    audits: Sequence[tuple[float, bool]], threshold: float, target: float
) -> tuple[bool, float | None]:
    """(broken, new threshold) from audited answers (confidence, agreed): when the answers the threshold serves
    break the promise, the lowest higher threshold whose audited answers reach `target` (None: none does)."""
    served = [(conf, agree) for conf, agree in audits if conf >= threshold]
    if not promise_broken(sum(agree for _, agree in served), len(served), target):
        return False, threshold
    higher = [(conf, agree) for conf, agree in served if conf > threshold]
    return True, choose_threshold([c for c, _ in higher], [a for _, a in higher], target)


# -- the catch-all's live share (label shift, Saerens et al. 2002) ---------------------------------------------------
ODDS_RANGE = (0.05, 100.0)  # how far the catch-all's live odds may move from its training odds


def shifted_confidence(confidence: float, catch_all: float, is_catch_all: bool, odds: float) -> float:
    """The confidence of an answer once the catch-all's prior odds are multiplied by `odds` (Bayes' rule under
    label shift: p'(y|x) ∝ p(y|x)·π_live(y)/π_train(y), only the catch-all's prior moving): the catch-all's
    probability `catch_all` is scaled by `odds` and all renormalised. A deferred answer (0) stays deferred."""
    if confidence <= 0.0 or odds == 1.0:
        return confidence
    total = odds * catch_all + (1.0 - catch_all)
    return min(1.0, (odds * confidence if is_catch_all else confidence) / total)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def catch_all_odds(catch_alls: Sequence[float], teacher_said: Sequence[bool]) -> float:
    """The odds factor that makes the re-weighted catch-all probabilities of these requests add up to how often
    the teacher answered the catch-all (+½ each way, so none or all seen stay finite): the maximum-likelihood
    label-shift correction of the catch-all's prior, solved by bisection on its log; within `ODDS_RANGE`."""
    logits = [_logit(p) for p in catch_alls]
    if not logits:
        return 1.0
    seen = (sum(teacher_said) + 0.5) * len(logits) / (len(logits) + 1.0)
    lo, hi = math.log(ODDS_RANGE[0]), math.log(ODDS_RANGE[1])
    for _ in range(60):
        mid = (lo + hi) / 2.0
        expected = sum(1.0 / (1.0 + math.exp(-(z + mid))) for z in logits)
        lo, hi = (mid, hi) if expected < seen else (lo, mid)
    return math.exp((lo + hi) / 2.0)
