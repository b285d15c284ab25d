"""Routing state in the store: per-task policies, their events, and recorded agreements."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from insource.config import Config
from insource.errors import BadRequest, InsourceError, NotFound
from insource.routing.policy import MODES, RoutePolicy, min_samples, wilson_lower
from insource.store import Store

AGREEMENT_WINDOW = 500


def _check_model(registry: Path, task: str, model: str) -> Path:
    from insource.distill.registry import list_models, resolve

    entries = {m.get("name"): m for m in list_models(registry)}
    entry = entries.get(model)
    if entry is None:
        raise NotFound(f"no model {model!r} in the registry {registry}", param="model", code="model_not_found")
    if entry.get("error"):
        raise BadRequest(f"model {model!r} is broken: {entry['error']}", param="model")
    if entry.get("task") != task:
        raise BadRequest(f"model {model!r} was trained for task {entry.get('task')!r}, not {task!r}", param="model")
    return resolve(registry, model)


def _cascade_threshold(folder: Path, policy: RoutePolicy) -> float:
    """The explicit threshold, or the one `insource eval` found for the target agreement."""
    from insource.distill.registry import read_thresholds

    if policy.threshold is not None:
        return policy.threshold
    if policy.target_agreement is None:
        raise BadRequest("cascade needs --threshold T or --target-agreement A", param="threshold")
    found = read_thresholds(folder).get(f"{policy.target_agreement:g}")
    if found is None:
        raise BadRequest(
            f"no threshold reaches agreement {policy.target_agreement:g} for {policy.model}: run "
            f"`insource eval --task {policy.task} --model {policy.model} --target-agreement "
            f"{policy.target_agreement:g}` first, or give --threshold",
            param="target_agreement",
        )
    return float(found)


def set_route(cfg: Config, store: Store, policy: RoutePolicy) -> None:
    """Validate and store a task's routing policy; every worker picks it up within a second."""
    if policy.mode not in MODES:
        raise BadRequest(f"--mode must be one of {', '.join(MODES)}", param="mode")
    for name, value in (
        ("threshold", policy.threshold),
        ("target-agreement", policy.target_agreement),
        ("audit-rate", policy.audit_rate),
        ("floor", policy.floor),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise BadRequest(f"--{name} must be within [0, 1], got {value}", param=name)
    if not 0.0 <= policy.percent <= 100.0:
        raise BadRequest(f"--percent must be within [0, 100], got {policy.percent}", param="percent")
    folder = _check_model(cfg.registry_path(), policy.task, policy.model)
    if policy.mode == "cascade":
        policy = dataclasses.replace(policy, threshold=_cascade_threshold(folder, policy))
    now = time.time()
    store.execute(
        "INSERT INTO routes (task, model, mode, percent, threshold, target_agreement, audit_rate, floor, active,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT(task) DO UPDATE SET model=excluded.model,"
        " mode=excluded.mode, percent=excluded.percent, threshold=excluded.threshold,"
        " target_agreement=excluded.target_agreement, audit_rate=excluded.audit_rate, floor=excluded.floor,"
        " active=1, updated_at=excluded.updated_at",
        (
            policy.task,
            policy.model,
            policy.mode,
            policy.percent,
            policy.threshold,
            policy.target_agreement,
            policy.audit_rate,
            policy.floor,
            now,
        ),
    )
    detail = {"model": policy.model, "mode": policy.mode, "percent": policy.percent, "threshold": policy.threshold}
    record_event(store, policy.task, "set", detail)


def record_event(store: Store, task: str, kind: str, detail: dict[str, Any]) -> None:
    store.execute(
        "INSERT INTO route_events (id, ts, task, kind, detail) VALUES (?, ?, ?, ?, ?)",
        ("evt_" + uuid.uuid4().hex, time.time(), task, kind, orjson.dumps(detail).decode()),
    )


def deactivate(store: Store, task: str, reason: dict[str, Any]) -> None:
    store.execute("UPDATE routes SET active=0, updated_at=? WHERE task=?", (time.time(), task))
    record_event(store, task, "rollback", reason)


def load_policies(cfg: Config, store: Store) -> dict[str, RoutePolicy]:
    """Config routes, overridden by routes set live (stored)."""
    policies = {}
    for task, r in cfg.routes.items():
        policy = RoutePolicy(task, r.model, r.mode, r.percent, r.threshold, r.target_agreement, r.audit_rate, r.floor)
        if policy.mode == "cascade" and policy.threshold is None:
            try:
                found = _cascade_threshold(_check_model(cfg.registry_path(), task, r.model), policy)
            except InsourceError:  # unresolved: the router treats a missing threshold as "never sure"
                found = None
            policy = dataclasses.replace(policy, threshold=found)
        policies[task] = policy
    for row in store.query("SELECT * FROM routes"):
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
        )
    return policies


def agreement_window(floor: float) -> int:
    """How many recent comparisons a task's agreement is judged on: at least enough for a verdict at `floor`."""
    return max(AGREEMENT_WINDOW, min_samples(floor))


def agreement_stats(store: Store, task: str, model: str, floor: float) -> tuple[int, int]:
    """(agreeing, total) over the most recent window of recorded comparisons."""
    row = store.query_one(
        "SELECT COUNT(*) AS n, COALESCE(SUM(agree), 0) AS ok FROM (SELECT agree FROM agreements"
        " WHERE task=? AND model=? ORDER BY ts DESC LIMIT ?) AS recent",
        (task, model, agreement_window(floor)),
    )
    return (int(row["ok"]), int(row["n"])) if row else (0, 0)


def show_routes(cfg: Config, store: Store) -> list[dict[str, Any]]:
    out = []
    for task, p in sorted(load_policies(cfg, store).items()):
        ok, n = agreement_stats(store, task, p.model, p.floor)
        events = [
            {"ts": e["ts"], "kind": e["kind"], "detail": orjson.loads(e["detail"])}
            for e in store.query("SELECT ts, kind, detail FROM route_events WHERE task=? ORDER BY ts", (task,))
        ]
        out.append(
            {
                "task": task,
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
                "target_agreement": p.target_agreement,
                "events": events,
            }
        )
    return out
