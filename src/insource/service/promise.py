"""A cascade's promise kept on live traffic: `--target-agreement A` is the agreement its answers deliver.

- **Calibration.** A cascade with a target and `calibrate` N > 0 starts `calibrating`: the teacher answers, the
  student predicts in the background, and each (confidence, agreed) pair is stored (`route_samples`, source
  "calibration"). Once N are in, the threshold is chosen on them: the higher of the lowest one whose samples'
  agreement reaches A with the Wilson margin `insource eval` uses and the lowest one whose answers the student's
  own confidences expect to reach A (`routing.policy.live_threshold`; for a classifier student, whose
  confidences are calibrated probabilities: a generative student's threshold needs the first only); until it
  exists the route keeps calibrating on more traffic.
- **The catch-all's live share.** A classifier whose teacher answers a catch-all label (`other`...) for
  out-of-scope requests learned that label's probability at its training share, which live traffic can far
  exceed. Each calibration sample also keeps the head's catch-all probability and whether the student and the
  teacher answered the catch-all; the route fits the factor on the catch-all's prior odds that makes the
  re-weighted probabilities match the teacher's share (label shift, Saerens et al. 2002, one prior moving:
  `routing.policy.catch_all_odds`), chooses the threshold on the confidences so re-weighted, and re-weighs every
  prediction by it from then on (`catch_all_odds` in the threshold's event). Out-of-scope requests then become
  confident catch-all answers, and in-scope answers near them less confident.
- **Audits.** A share of the student's answers (`audit_rate`, 2% by default with a target) is also asked of
  the teacher; each audit keeps the answer's confidence. When the audited answers the threshold serves break
  the promise (`routing.policy.promise_broken`), the threshold is raised to the lowest one whose audited
  answers reach A; when none does, the route rolls back to the teacher. The rollback floor stays the last
  resort, judged first (and at once on each worker's own audits).

Every worker records samples; each one, every half second, reads all workers' samples from the store, and the
one that first appends to the policy's threshold history (`route_thresholds`, keyed by its sequence number)
decides: the others read that decision on their next refresh.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from insource.errors import BadRequest
from insource.routing.policy import (
    RoutePolicy,
    calibration_samples,
    catch_all_odds,
    choose_threshold,
    live_threshold,
    min_samples,
    raised_threshold,
    shifted_confidence,
)
from insource.store import Store
from insource.store import routes as queries

log = logging.getLogger("insource.router")
DEFAULT_AUDIT_RATE = 0.02  # share of a promised cascade's answers the teacher audits when none is given
CALIBRATION, AUDIT = "calibration", "audit"
AUDIT_WINDOW = 2_000  # the most recent audits a promise is judged on (at least min_samples(target))


def promised(policy: RoutePolicy) -> bool:
    """Whether the route promises an agreement: a cascade with a target (not an explicit threshold)."""
    return policy.mode == "cascade" and policy.target_agreement is not None


def with_defaults(policy: RoutePolicy, audit_rate: float | None, calibrate: int | None, cli: bool) -> RoutePolicy:
    """`audit_rate` and `calibrate` as given, else their defaults: for a promised cascade 2% of its answers
    audited and enough live requests to show its target (`routing.policy.calibration_samples`), else none."""
    name = "--calibrate" if cli else "calibrate"
    if calibrate is not None and calibrate < 0:
        raise BadRequest(f"{name} must be 0 or more, got {calibrate}", param="calibrate")
    target = policy.target_agreement
    keeps = policy.mode == "cascade" and target is not None and policy.threshold is None
    if calibrate and not keeps:
        raise BadRequest(f"{name} applies to cascade with a target agreement only", param="calibrate")
    if audit_rate is None:
        audit_rate = DEFAULT_AUDIT_RATE if keeps else 0.0
    if calibrate is None:
        calibrate = calibration_samples(target) if keeps and target is not None else 0
    return dataclasses.replace(policy, audit_rate=audit_rate, calibrate=calibrate)


def _key(policy: RoutePolicy) -> tuple[str, str, float]:
    return policy.task, policy.model, policy.since


def history(store: Store, policy: RoutePolicy) -> list[dict[str, Any]]:
    """The policy's threshold history as stored (oldest first)."""
    rows = queries.thresholds(store, *_key(policy))
    return [
        {"seq": int(r["seq"]), "at": r["at"], "threshold": r["threshold"], "reason": r["reason"], **_detail(r)}
        for r in rows
    ]


def _detail(row: Any) -> dict[str, Any]:
    detail = orjson.loads(row["detail"])
    return detail if isinstance(detail, dict) else {}


def current(store: Store, policy: RoutePolicy) -> RoutePolicy:
    """The policy with its live threshold: the latest of its history, else calibrating when it calibrates."""
    if not promised(policy):
        return policy
    rows = queries.thresholds(store, *_key(policy))
    if rows:
        threshold, at = rows[-1]["threshold"], float(rows[-1]["at"])
        odds = float(_detail(rows[-1]).get("catch_all_odds", 1.0))
        return dataclasses.replace(
            policy, threshold=threshold, calibrating=threshold is None, threshold_since=at, catch_all_odds=odds
        )
    if policy.calibrate > 0:
        return dataclasses.replace(policy, threshold=None, calibrating=True)
    return policy


def _append(
    store: Store, policy: RoutePolicy, threshold: float | None, reason: str, detail: dict[str, Any]
) -> RoutePolicy | None:
    """Append to the policy's threshold history and record the event; None when another worker appended first."""
    from insource.service.routes import record_event

    seq = len(queries.thresholds(store, *_key(policy)))
    now = time.time()
    if policy.catch_all_odds != 1.0:  # the catch-all's odds the threshold was chosen with carry over
        detail = {"catch_all_odds": policy.catch_all_odds} | detail
    if not queries.insert_threshold(store, _key(policy), seq, now, threshold, reason, orjson.dumps(detail).decode()):
        return None
    record_event(store, policy.task, "threshold", {"model": policy.model, "threshold": threshold, **detail}, ts=now)
    log.warning("task %s: threshold %s (%s)", policy.task, threshold, reason)
    odds = float(detail.get("catch_all_odds", 1.0))
    return dataclasses.replace(policy, threshold=threshold, calibrating=False, threshold_since=now, catch_all_odds=odds)


def calibration_need(policy: RoutePolicy) -> int:
    """How many live samples the calibrating policy chooses its threshold on (at least)."""
    return policy.calibrate or calibration_samples(policy.target_agreement or 0.0)


def calibration_progress(store: Store, policy: RoutePolicy) -> int:
    """How many live samples the calibrating policy has (up to `calibration_need`)."""
    return len(queries.samples(store, _key(policy), CALIBRATION, policy.since, calibration_need(policy)))


def _calibrate(store: Store, policy: RoutePolicy, expects: bool) -> RoutePolicy:
    """Choose the threshold on the live samples once there are enough; else the policy as it is. `expects`: the
    student's confidences are calibrated probabilities, so their expectation bounds the threshold too."""
    target = policy.target_agreement
    assert target is not None
    need = calibration_need(policy)
    window = 4 * max(need, calibration_samples(target))  # the most recent: enough to show the target
    rows = queries.samples(store, _key(policy), CALIBRATION, policy.since, window)
    if len(rows) < need:
        return policy
    odds, confidences = live_confidences(rows)
    agrees = [bool(r["agree"]) for r in rows]
    threshold = (live_threshold if expects else choose_threshold)(confidences, agrees, target)
    if threshold is None:
        return policy  # no threshold reaches the target yet: the teacher keeps answering, more samples come
    agreed = sum(a for c, a in zip(confidences, agrees, strict=True) if c >= threshold)
    answered = sum(1 for c in confidences if c >= threshold)
    detail = {"samples": len(rows), "agreement": agreed / answered, "coverage": answered / len(rows)}
    if odds != 1.0:
        detail |= {"catch_all_odds": odds, "catch_all_share": sum(r["teacher_catch_all"] for r in rows) / len(rows)}
    return _append(store, policy, threshold, "calibrated", detail) or current(store, policy)


def live_confidences(rows: list[Any]) -> tuple[float, list[float]]:
    """(the catch-all's live odds factor, each sample's confidence under it) from calibration samples: when the
    student has a catch-all label and every sample kept its probability, the factor that matches how often the
    teacher answered the catch-all on them (`routing.policy.catch_all_odds`: label shift, one prior moving);
    else 1 and the confidences as predicted."""
    raw = [float(r["confidence"]) for r in rows]
    if not rows or any(r["catch_all"] is None for r in rows):
        return 1.0, raw
    said = [bool(r["teacher_catch_all"]) for r in rows]
    odds = catch_all_odds([float(r["catch_all"]) for r in rows], said)
    shifted = [
        shifted_confidence(c, float(r["catch_all"]), bool(r["student_catch_all"]), odds)
        for c, r in zip(raw, rows, strict=True)
    ]
    return odds, shifted


def _audit(store: Store, policy: RoutePolicy) -> RoutePolicy:
    """Raise the threshold when the audited answers it serves break the promise; roll back when no higher
    threshold's audited answers keep it."""
    from insource.service.routes import roll_back

    target, threshold = policy.target_agreement, policy.threshold
    assert target is not None and threshold is not None
    window = max(AUDIT_WINDOW, min_samples(target))
    rows = queries.samples(store, _key(policy), AUDIT, policy.since, window)
    audits = [(float(r["confidence"]), bool(r["agree"])) for r in rows]
    broken, raised = raised_threshold(audits, threshold, target)
    if not broken:
        return policy
    served = [agree for conf, agree in audits if conf >= threshold]
    detail = {"audits": len(served), "agreement": sum(served) / len(served), "from": threshold}
    if raised is None:
        why = f"no threshold above {threshold:.3f} reaches the target agreement {target:g} on audited answers"
        reason = {"model": policy.model, "mode": policy.mode, **detail, "target_agreement": target}
        roll_back(store, policy, reason | {"floor": policy.floor, "n": len(served), "reason": why})
        return dataclasses.replace(policy, active=False)
    return _append(store, policy, raised, "audit", detail) or current(store, policy)


def keep_promises(
    store: Store, policies: dict[str, RoutePolicy], probabilities: Callable[[str], bool] = lambda _: True
) -> dict[str, RoutePolicy]:
    """Every active promised cascade's threshold, chosen on calibration samples or raised on audits.
    `probabilities(model)`: whether the model's confidences are calibrated probabilities (a classifier head's,
    temperature-scaled on validation; not a generative student's least likely token)."""
    out = dict(policies)
    for task, policy in policies.items():
        if not policy.active or not promised(policy):
            continue
        if policy.calibrating:
            out[task] = _calibrate(store, policy, probabilities(policy.model))
        elif policy.threshold is not None and policy.audit_rate > 0:
            out[task] = _audit(store, policy)
    return out


def thresholds_shown(policy: RoutePolicy, rows: list[dict[str, Any]], base: float | None) -> list[dict[str, Any]]:
    """`route show`'s threshold history: how the policy started (`base`: the threshold it was set with), then
    every change, each `{"at", "threshold", "reason"}`."""
    at = policy.since or None
    if not promised(policy):
        first = [{"at": at, "threshold": base, "reason": "given"}] if policy.mode == "cascade" else []
    elif policy.calibrate > 0:
        first = [{"at": at, "threshold": None, "reason": "calibrating"}]
    else:
        first = [{"at": at, "threshold": base, "reason": "eval"}]
    return first + [{"at": r["at"], "threshold": r["threshold"], "reason": r["reason"]} for r in rows]


def coverage(store: Store, policy: RoutePolicy) -> float | None:
    """Share of the callers' requests for the task the student answered since the policy was set."""
    answered, n = queries.coverage_counts(store, policy.task, policy.model, policy.since)
    return answered / n if n else None
