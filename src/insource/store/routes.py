"""Routing queries: per-task policies (`routes`), their history (`route_events`) and recorded agreements.

The store writes what it is given: which policy to write, and whether it answers, is decided in
`service/routes.py`.
"""

from __future__ import annotations

from typing import Any

from insource.store.sqlite import Row, Store

FIELDS = ("task", "model", "mode", "percent", "threshold", "target_agreement", "audit_rate", "floor")
_COLUMNS = ", ".join((*FIELDS, "active", "updated_at"))


def _values(route: dict[str, Any], active: bool, updated_at: float) -> tuple[Any, ...]:
    return (*(route[name] for name in FIELDS), int(active), updated_at)


def upsert_active(store: Store, route: dict[str, Any], updated_at: float) -> None:
    """Store `route` (`FIELDS`) as its task's route, answering from `updated_at` on."""
    store.execute(
        f"INSERT INTO routes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task) DO UPDATE SET"
        " model=excluded.model, mode=excluded.mode, percent=excluded.percent, threshold=excluded.threshold,"
        " target_agreement=excluded.target_agreement, audit_rate=excluded.audit_rate, floor=excluded.floor,"
        " active=1, updated_at=excluded.updated_at",
        _values(route, True, updated_at),
    )


def deactivate_if_current(store: Store, task: str, since: float) -> int:
    """Deactivate the stored route of `task` if it is still the one set at `since` and answering (rows changed)."""
    return store.execute("UPDATE routes SET active=0 WHERE task=? AND active=1 AND updated_at=?", (task, since))


def insert_inactive(store: Store, route: dict[str, Any], since: float) -> int:
    """A config route's inactive row, unless the task already has a stored route (rows changed)."""
    return store.execute(
        f"INSERT INTO routes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task) DO NOTHING",
        _values(route, False, since),
    )


def turn_off(store: Store, route: dict[str, Any], since: float) -> int:
    """Deactivate the task's route whatever its state; a config route gets a stored inactive row."""
    return store.execute(
        f"INSERT INTO routes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task) DO UPDATE SET"
        " active=0",
        _values(route, False, since),
    )


def all_routes(store: Store) -> list[Row]:
    return store.query(f"SELECT {_COLUMNS} FROM routes")


def insert_event(store: Store, event_id: str, ts: float, task: str, kind: str, detail: str) -> None:
    store.execute(
        "INSERT INTO route_events (id, ts, task, kind, detail) VALUES (?, ?, ?, ?, ?)",
        (event_id, ts, task, kind, detail),
    )


def events(store: Store, task: str) -> list[Row]:
    """The task's route events, oldest first."""
    return store.query("SELECT ts, kind, detail FROM route_events WHERE task=? ORDER BY ts, id", (task,))


def agreement_counts(store: Store, task: str, model: str, since: float, window: int) -> tuple[int, int]:
    """(agreeing, total) over the `window` most recent comparisons of `model` on `task` recorded since `since`."""
    row = store.query_one(
        "SELECT COUNT(*) AS n, COALESCE(SUM(agree), 0) AS ok FROM (SELECT agree FROM agreements"
        " WHERE task=? AND model=? AND ts>=? ORDER BY ts DESC LIMIT ?) AS recent",
        (task, model, since, window),
    )
    return (int(row["ok"]), int(row["n"])) if row else (0, 0)


# -- a cascade's promise: calibration, threshold history, samples with their confidence --------------------------
def set_calibrate(store: Store, task: str, since: float, calibrate: int) -> None:
    """How many live requests the route of `task` set at `since` calibrates on."""
    store.execute(
        "INSERT INTO route_promises (task, since, calibrate) VALUES (?, ?, ?) ON CONFLICT(task) DO UPDATE SET"
        " since=excluded.since, calibrate=excluded.calibrate",
        (task, since, calibrate),
    )


def calibrates(store: Store) -> dict[tuple[str, float], int]:
    """{(task, since): live requests to calibrate on} of the stored routes."""
    rows = store.query("SELECT task, since, calibrate FROM route_promises")
    return {(r["task"], float(r["since"])): int(r["calibrate"]) for r in rows}


def thresholds(store: Store, task: str, model: str, since: float) -> list[Row]:
    """The threshold history of one policy (task, model, since), oldest first."""
    return store.query(
        "SELECT seq, at, threshold, reason, detail FROM route_thresholds WHERE task=? AND model=? AND since=?"
        " ORDER BY seq",
        (task, model, since),
    )


def insert_threshold(
    store: Store, key: tuple[str, str, float], seq: int, at: float, threshold: float | None, reason: str, detail: str
) -> int:
    """Append to a policy's threshold history at `seq`, unless another worker already did (rows changed)."""
    return store.execute(
        "INSERT INTO route_thresholds (task, model, since, seq, at, threshold, reason, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (*key, seq, at, threshold, reason, detail),
    )


def samples(store: Store, key: tuple[str, str, float], source: str, after: float, limit: int) -> list[Row]:
    """The `limit` most recent samples of one policy from `source`, recorded at or after `after`: (confidence,
    agree, catch_all, student_catch_all, teacher_catch_all), the last three None unless the student has a catch-all
    label."""
    return store.query(
        "SELECT confidence, agree, catch_all, student_catch_all, teacher_catch_all FROM route_samples"
        " WHERE task=? AND model=? AND since=? AND source=? AND ts>=?"
        " ORDER BY ts DESC LIMIT ?",
        (*key, source, after, limit),
    )


def coverage_counts(store: Store, task: str, served_by: str, since: float) -> tuple[int, int]:
    """(answered by `served_by`, all) of the callers' requests for `task` since `since` (audits not counted)."""
    row = store.query_one(
        "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN served_by=? THEN 1 ELSE 0 END), 0) AS answered FROM usage"
        " WHERE task=? AND ts>=? AND endpoint<>'audit'",
        (served_by, task, since),
    )
    return (int(row["answered"]), int(row["n"])) if row else (0, 0)
