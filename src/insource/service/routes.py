"""Routing state in the store: per-task policies, their events, recorded agreements, and the rollback verdict.

A route set live (`insource route set`) is stored and overrides the config's `[routes.X]` for its task. A
stored route's `updated_at` is when it was set: its agreement counts only comparisons recorded since then, so
a new policy is never judged on its predecessor's comparisons. A config route counts them all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from insource.config import Config
from insource.errors import BadRequest, ConfigError, InsourceError, NotFound, NotReady
from insource.routing.policy import MODES, RoutePolicy, min_samples, should_roll_back, wilson_lower, wilson_upper
from insource.service import promise
from insource.service.generative import check_servable
from insource.store import Store
from insource.store import routes as queries

log = logging.getLogger("insource.router")
AGREEMENT_WINDOW = 500
MAX_REASON = 500


def _name(option: str, cli: bool) -> str:
    """An option as the user wrote it: `--target-agreement` on the command line, `target_agreement` in config."""
    return "--" + option.replace("_", "-") if cli else option


def check_ranges(policy: RoutePolicy, cli: bool = True) -> None:
    """A known mode, and every option within its range."""
    if policy.mode not in MODES:
        raise BadRequest(f"{_name('mode', cli)} must be one of {', '.join(MODES)}, got {policy.mode!r}", param="mode")
    for option in ("threshold", "target_agreement", "audit_rate", "floor"):
        value = getattr(policy, option)
        if value is not None and not 0.0 <= value <= 1.0:
            raise BadRequest(f"{_name(option, cli)} must be within [0, 1], got {value}", param=option)
    if not 0.0 <= policy.percent <= 100.0:
        raise BadRequest(f"{_name('percent', cli)} must be within [0, 100], got {policy.percent}", param="percent")


def check_fit(policy: RoutePolicy, cli: bool = True) -> None:
    """Options that fit the mode: each applies to some modes only, and is refused elsewhere (never ignored)."""
    threshold, target = _name("threshold", cli), _name("target_agreement", cli)
    if policy.mode == "canary" and policy.percent <= 0:
        raise BadRequest(f"canary needs {_name('percent', cli)} P (0 < P <= 100): the share the student answers")
    if policy.mode != "canary" and policy.percent > 0:
        raise BadRequest(f"{_name('percent', cli)} applies to canary only, not {policy.mode}", param="percent")
    if policy.mode == "cascade" and policy.threshold is not None and policy.target_agreement is not None:
        raise BadRequest(f"cascade takes {threshold} T or {target} A, not both", param="threshold")
    if policy.mode == "cascade" and policy.threshold is None and policy.target_agreement is None:
        raise BadRequest(f"cascade needs {threshold} T or {target} A", param="threshold")
    if policy.mode != "cascade" and (policy.threshold is not None or policy.target_agreement is not None):
        raise BadRequest(f"{threshold} and {target} apply to cascade only, not {policy.mode}", param="threshold")
    if policy.mode == "shadow" and policy.audit_rate > 0:
        audit = _name("audit_rate", cli)
        raise BadRequest(f"shadow compares every request: {audit} does not apply", param="audit_rate")


def _check_model(registry: Path, task: str, model: str) -> Path:
    from insource.registry.entries import STUDENT_KINDS, list_models, resolve

    entries = {m.get("name"): m for m in list_models(registry)}
    entry = entries.get(model)
    if entry is None:
        raise NotFound(f"no model {model!r} in the registry {registry}", param="model", code="model_not_found")
    if entry.get("error"):
        raise BadRequest(f"model {model!r} is broken: {entry['error']}", param="model")
    if entry.get("status") == "damaged":
        raise BadRequest(f"model {model!r} is damaged: {entry.get('problem')}", param="model")
    if entry.get("task") != task:
        raise BadRequest(f"model {model!r} was trained for task {entry.get('task')!r}, not {task!r}", param="model")
    if entry.get("student") not in STUDENT_KINDS:
        raise BadRequest(f"model {model!r} is a {entry.get('student')} student, which the router cannot serve")
    return resolve(registry, model)


def _eval_found_none(folder: Path, target: float) -> bool:
    """Whether an `insource eval` at this target agreement ran and found no threshold reaching it."""
    from insource.registry.entries import EVAL_FILE, read_json

    try:
        runs = read_json(folder / EVAL_FILE).get("runs")
    except InsourceError:  # no eval yet, or a damaged file: nothing known
        return False
    if not isinstance(runs, dict):
        return False
    return any(
        isinstance(run, dict) and str(key).endswith(f"@{target:g}") and run.get("threshold") is None
        for key, run in runs.items()
    )


def _cascade_threshold(folder: Path, policy: RoutePolicy, cli: bool = True) -> float:
    """The explicit threshold, or the one `insource eval` found for the target agreement."""
    from insource.registry.entries import read_thresholds

    if policy.threshold is not None:
        return policy.threshold
    target = policy.target_agreement
    if target is None:
        raise BadRequest(f"cascade needs {_name('threshold', cli)} T or {_name('target_agreement', cli)} A")
    found = read_thresholds(folder).get(f"{target:g}")
    if found is not None:
        return float(found)
    if _eval_found_none(folder, target):
        raise BadRequest(
            f"the evaluation of {policy.model} found no threshold reaching agreement {target:g}: choose a lower "
            f"{_name('target_agreement', cli)} or give {_name('threshold', cli)}",
            param="target_agreement",
        )
    raise BadRequest(
        f"no threshold is known for agreement {target:g} with {policy.model}: run `insource eval --task "
        f"{policy.task} --model {policy.model} --target-agreement {target:g}` first, or give "
        f"{_name('threshold', cli)}",
        param="target_agreement",
    )


def resolve_policy(cfg: Config, policy: RoutePolicy, cli: bool = True) -> RoutePolicy:
    """A policy checked against its mode and the registry, with a cascade's threshold resolved."""
    check_ranges(policy, cli)
    folder = _check_model(cfg.registry_path(), policy.task, policy.model)
    try:  # a generative student: its llama.cpp files exist and fit together
        check_servable(cfg.registry_path(), policy.model, cfg.inhouse.generative_base_url)
    except NotReady as exc:
        raise BadRequest(exc.message, param="model") from None
    check_fit(policy, cli)
    if policy.mode == "cascade":
        policy = dataclasses.replace(policy, threshold=_cascade_threshold(folder, policy, cli))
    return policy


def _fields(policy: RoutePolicy) -> dict[str, Any]:
    """The policy's stored fields (`store.routes.FIELDS`)."""
    return {name: getattr(policy, name) for name in queries.FIELDS}


def pin_model(registry: Path, model: str) -> str:
    """`TASK@latest` (or a bare `TASK`) named in `route set`: the version it is now, so that a route always names
    one version and a later `insource distill` never changes what answers without a new `route set`."""
    from insource.registry.entries import resolve

    _task, sep, version = model.partition("@")
    return resolve(registry, model).name if not sep or version == "latest" else model


def set_route(cfg: Config, store: Store, policy: RoutePolicy) -> None:
    """Validate and store a task's routing policy; every worker picks it up within a second."""
    policy = dataclasses.replace(policy, model=pin_model(cfg.registry_path(), policy.model))
    policy = resolve_policy(cfg, policy)
    now = time.time()
    queries.upsert_active(store, _fields(policy), now)
    queries.set_calibrate(store, policy.task, now, policy.calibrate)
    detail = {"model": policy.model, "mode": policy.mode, "percent": policy.percent, "threshold": policy.threshold}
    if promise.promised(policy):
        detail |= {"target_agreement": policy.target_agreement, "audit_rate": policy.audit_rate}
        detail |= {"calibrate": policy.calibrate}
    record_event(store, policy.task, "set", detail, ts=now)


def record_event(store: Store, task: str, kind: str, detail: dict[str, Any], ts: float | None = None) -> None:
    stamp = time.time() if ts is None else ts
    queries.insert_event(store, "evt_" + uuid.uuid4().hex, stamp, task, kind, orjson.dumps(detail).decode())


def roll_back(store: Store, policy: RoutePolicy, reason: dict[str, Any]) -> bool:
    """Deactivate `policy` and record the event, once: False when it was already rolled back or replaced.

    A stored route is deactivated only if it is still the one set at `policy.since` (a newer `route set`
    is never undone by a verdict on its predecessor); a config route gets a stored, inactive row, so it
    stays rolled back across refreshes and restarts until `insource route set` sets the task again.
    """
    if policy.since:
        changed = queries.deactivate_if_current(store, policy.task, policy.since)
    else:
        changed = queries.insert_inactive(store, _fields(policy), policy.since)
    if changed:
        record_event(store, policy.task, "rollback", reason)
        log.warning("task %s rolled back to the teacher: %s", policy.task, reason)
    return bool(changed)


def config_policies(cfg: Config) -> tuple[dict[str, RoutePolicy], dict[str, str]]:
    """The config's routes, checked like `route set` checks them, and the problem of each one that failed
    (that route is kept inactive: the teacher answers its task)."""
    policies: dict[str, RoutePolicy] = {}
    problems: dict[str, str] = {}
    for task, r in cfg.routes.items():
        policy = RoutePolicy(task, r.model, r.mode, r.percent, r.threshold, r.target_agreement, 0.0, r.floor)
        try:
            policy = promise.with_defaults(policy, r.audit_rate, r.calibrate, cli=False)
            policy = resolve_policy(cfg, policy, cli=False)
        except InsourceError as exc:
            problems[task] = f"[routes.{task}]: {exc.message}"
            policy = dataclasses.replace(policy, active=False)
        policies[task] = policy
    return policies, problems


def check_config_routes(cfg: Config) -> None:
    """Refuse a config whose routes name a missing model, a model of another task, options that do not fit
    their mode, or a target agreement no evaluation reached (called before `insource serve` starts)."""
    problems = config_policies(cfg)[1]
    if problems:
        raise ConfigError("\n".join(problems[task] for task in sorted(problems)))


def load_policies(
    cfg: Config, store: Store, configured: dict[str, RoutePolicy] | None = None
) -> dict[str, RoutePolicy]:
    """Config routes (`configured`: already checked, else checked now), overridden by routes set live, each with
    its live threshold (`service/promise.py`)."""
    policies = dict(config_policies(cfg)[0] if configured is None else configured)
    calibrates = queries.calibrates(store)
    for row in queries.all_routes(store):
        policies[row["task"]] = RoutePolicy(
            row["task"],
            row["model"],
            row["mode"],
            row["percent"],
            row["threshold"],
            row["target_agreement"],
            row["audit_rate"],
            row["floor"],
            bool(row["active"]),
            float(row["updated_at"]),
            calibrates.get((row["task"], float(row["updated_at"])), 0),
        )
    return {task: promise.current(store, policy) for task, policy in policies.items()}


def agreement_window(floor: float) -> int:
    """How many recent comparisons a task's agreement is judged on: at least enough for a verdict at `floor`."""
    return max(AGREEMENT_WINDOW, min_samples(floor))


def agreement_stats(store: Store, policy: RoutePolicy) -> tuple[int, int]:
    """(agreeing, total) over the policy's window: its most recent comparisons recorded since it was set, or
    since its live threshold last changed (what the student serves now)."""
    since = max(policy.since, policy.threshold_since)
    return queries.agreement_counts(store, policy.task, policy.model, since, agreement_window(policy.floor))


def rollback_reason(policy: RoutePolicy, ok: int, n: int) -> dict[str, Any] | None:
    """The rollback event's detail when `ok` agreements out of `n` put the student below its floor, else None."""
    if not should_roll_back(ok, n, policy.floor):
        return None
    return {
        "model": policy.model,
        "mode": policy.mode,
        "agreement": ok / n,
        "n": n,
        "lower_bound": wilson_lower(ok, n),
        "upper_bound": wilson_upper(ok, n),
        "floor": policy.floor,
    }


def judge_routes(store: Store, policies: dict[str, RoutePolicy]) -> dict[str, RoutePolicy]:
    """Roll back every active route whose recorded agreement (all workers' comparisons) is below its floor."""
    out = dict(policies)
    for task, policy in policies.items():
        if not policy.active:
            continue
        reason = rollback_reason(policy, *agreement_stats(store, policy))
        if reason is not None:
            roll_back(store, policy, reason)  # False when another worker got there first: inactive all the same
            out[task] = dataclasses.replace(policy, active=False)
    return out


def route_state(active: bool, events: list[dict[str, Any]], calibrating: bool = False) -> str:
    """Whether a route's student answers ("answering") or learns its threshold on live traffic ("calibrating"),
    else why the teacher does: "off" (turned off by hand, or a config route that cannot answer) or
    "rolled_back" (its agreement fell below its floor)."""
    if active:
        return "calibrating" if calibrating else "answering"
    for event in reversed(events):
        if event["kind"] in ("off", "rollback"):
            return "off" if event["kind"] == "off" else "rolled_back"
        if event["kind"] == "set":
            break
    return "off"


def _events(store: Store, task: str) -> list[dict[str, Any]]:
    rows = queries.events(store, task)
    return [{"ts": e["ts"], "kind": e["kind"], "detail": orjson.loads(e["detail"])} for e in rows]


def route_off(cfg: Config, store: Store, task: str, reason: str | None = None, by: str = "cli") -> dict[str, Any]:
    """Send `task` back to the teacher by hand (every worker within a second) and record when, why and by whom;
    `set_route` turns it on again. Returns the task's `show_routes` row."""
    if reason is not None and len(reason) > MAX_REASON:
        raise BadRequest(f"the reason must be at most {MAX_REASON} characters", param="reason")
    policies = load_policies(cfg, store)
    policy = policies.get(task)
    if policy is None:
        known = ", ".join(sorted(policies)[:20]) or "none"
        raise NotFound(
            f"no route for task {task!r}: its requests already go to the teacher (routed tasks: {known})",
            param="task",
            code="route_not_found",
        )
    if route_state(policy.active, _events(store, task)) != "off":
        queries.turn_off(store, _fields(policy), policy.since)
        record_event(store, task, "off", {"model": policy.model, "mode": policy.mode, "reason": reason, "by": by})
        log.warning("task %s turned off by hand (%s): the teacher answers it", task, by)
    return next(row for row in show_routes(cfg, store) if row["task"] == task)


def show_routes(cfg: Config, store: Store) -> list[dict[str, Any]]:
    configured, problems = config_policies(cfg)
    stored = {r["task"]: r["threshold"] for r in queries.all_routes(store)}
    out = []
    for task, p in sorted(load_policies(cfg, store, configured).items()):
        row = _route_row(store, p, stored.get(task, configured[task].threshold if task in configured else None))
        row["problem"] = problems.get(task) if task not in stored else None  # a config route that failed its check
        out.append(row)
    return out


def _route_row(store: Store, p: RoutePolicy, base: float | None) -> dict[str, Any]:
    """One route as `route show` gives it (`base`: the threshold it was set with, before any live change)."""
    ok, n = agreement_stats(store, p)
    events = _events(store, p.task)
    changes = promise.history(store, p)
    return {
        "task": p.task,
        "model": p.model,
        "mode": p.mode,
        "threshold": p.threshold,
        "percent": p.percent,
        "audit_rate": p.audit_rate,
        "floor": p.floor,
        "agreement": ok / n if n else None,
        "n": n,
        "agreement_lower_bound": wilson_lower(ok, n) if n else None,
        "active": p.active,
        "state": route_state(p.active, events, p.calibrating),
        "target_agreement": p.target_agreement,
        "live_agreement": ok / n if n else None,
        "live_agreement_low": wilson_lower(ok, n) if n else None,
        "coverage": promise.coverage(store, p),
        "audited": p.audit_rate > 0 or p.mode == "shadow",
        "calibrate": promise.calibration_need(p) if p.calibrating else p.calibrate,
        "calibrated": promise.calibration_progress(store, p) if p.calibrating else None,
        "thresholds": promise.thresholds_shown(p, changes, base),
        "since": p.since or None,
        "events": events,
    }
