"""The dashboard's queries beyond spend (which it reads from the daily rollups, `usage_queries`): captures per
task, agreements, and route events."""

from __future__ import annotations

from insource.store.sqlite import Row, Store

# Agreements are bucketed in quarter hours here and folded into local days by the caller (every timezone's offset
# is a whole number of quarter hours); PostgreSQL's CAST rounds where SQLite's truncates, hence FLOOR there.
BUCKET_S = 900


def _bucket(store: Store) -> str:
    return f"FLOOR(ts / {BUCKET_S})" if store.dialect == "postgres" else f"CAST(ts / {BUCKET_S} AS INTEGER)"


def captures_by_task(store: Store) -> list[Row]:
    return store.query("SELECT task, COUNT(*) AS n FROM captures GROUP BY task ORDER BY task")


def task_known(store: Store, task: str) -> bool:
    """Whether any record names `task`: usage, captures, routes or agreements."""
    for table in ("usage_daily", "captures", "routes", "agreements"):
        if store.query_one(f"SELECT 1 AS one FROM {table} WHERE task = ? LIMIT 1", (task,)):
            return True
    return False


def agreement_buckets(store: Store, since: float, task: str | None = None) -> list[Row]:
    """(bucket, task, n, agree) of recorded student/teacher comparisons (audits and shadow runs) per quarter
    hour (`bucket * BUCKET_S` is its start, a Unix time)."""
    where, params = ("ts >= ? AND task = ?", (since, task)) if task is not None else ("ts >= ?", (since,))
    return store.query(
        f"SELECT {_bucket(store)} AS bucket, task, COUNT(*) AS n, SUM(agree) AS agree FROM agreements"
        f" WHERE {where} GROUP BY bucket, task ORDER BY bucket, task",
        params,
    )


def route_events(store: Store, kind: str | None = None, task: str | None = None, limit: int = 200) -> list[Row]:
    """The newest route events (set, rollback, off...), newest first."""
    clauses, params = ["1 = 1"], []
    if kind is not None:
        clauses.append("kind = ?")
        params.append(kind)
    if task is not None:
        clauses.append("task = ?")
        params.append(task)
    return store.query(
        f"SELECT ts, task, kind, detail FROM route_events WHERE {' AND '.join(clauses)} ORDER BY ts DESC LIMIT ?",
        (*params, limit),
    )
