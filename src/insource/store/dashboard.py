"""The dashboard's queries: spend per day and dimension, tasks, agreements, audits and route events.

Days are UTC calendar days (`strftime` is translated for PostgreSQL in `postgres.translate`). Every query takes
a time window so a page reads what it shows, not the whole history.
"""

from __future__ import annotations

from insource.store import AUDITS_SQL, CALLER_REQUESTS_SQL
from insource.store.sqlite import Row, Store

DAY_SQL = "strftime('%Y-%m-%d', ts, 'unixepoch')"
DIMENSIONS = {"model": "model", "task": "task", "tenant": "tenant", "key": "key_id", "served_by": "served_by"}
# A student answers as "TASK@vN"; a provider as "PROVIDER:UPSTREAM_MODEL" (a task name has no colon).
STUDENT_SQL = "SUM(CASE WHEN served_by <> '' AND served_by NOT LIKE '%:%' AND endpoint <> 'audit' THEN 1 ELSE 0 END)"


def daily_spend(store: Store, dim: str, since: float, until: float) -> list[Row]:
    """(day, grp, cost_usd, cost_avoided_usd, requests) per UTC day and value of `dim`."""
    expr = DIMENSIONS[dim]
    return store.query(
        f"SELECT {DAY_SQL} AS day, {expr} AS grp, SUM(cost_usd) AS cost_usd, SUM(cost_avoided_usd) AS"
        f" cost_avoided_usd, {CALLER_REQUESTS_SQL} AS requests FROM usage WHERE ts >= ? AND ts < ?"
        " GROUP BY day, grp ORDER BY day, grp",
        (since, until),
    )


def totals(store: Store, since: float, until: float) -> Row:
    """Spend, cost avoided, caller requests and audits in a window."""
    row = store.query_one(
        f"SELECT COALESCE(SUM(cost_usd), 0) AS cost_usd, COALESCE(SUM(cost_avoided_usd), 0) AS cost_avoided_usd,"
        f" COALESCE({CALLER_REQUESTS_SQL}, 0) AS requests, COALESCE({AUDITS_SQL}, 0) AS audits, COUNT(*) AS records"
        " FROM usage WHERE ts >= ? AND ts < ?",
        (since, until),
    )
    return row or {"cost_usd": 0.0, "cost_avoided_usd": 0.0, "requests": 0, "audits": 0, "records": 0}


def usage_count(store: Store) -> int:
    row = store.query_one("SELECT COUNT(*) AS n FROM usage")
    return int(row["n"]) if row else 0


def by_dimension(store: Store, dim: str, since: float, until: float) -> list[Row]:
    """Per value of `dim`: caller requests, audits, requests a student answered, spend and cost avoided."""
    expr = DIMENSIONS[dim]
    return store.query(
        f"SELECT {expr} AS grp, {CALLER_REQUESTS_SQL} AS requests, {AUDITS_SQL} AS audits, {STUDENT_SQL} AS"
        " student_requests, SUM(cost_usd) AS cost_usd, SUM(cost_avoided_usd) AS cost_avoided_usd,"
        " MAX(ts) AS last_ts FROM usage WHERE ts >= ? AND ts < ? GROUP BY grp ORDER BY cost_usd DESC, grp",
        (since, until),
    )


def captures_by_task(store: Store) -> list[Row]:
    return store.query("SELECT task, COUNT(*) AS n FROM captures GROUP BY task ORDER BY task")


def task_known(store: Store, task: str) -> bool:
    """Whether any record names `task`: usage, captures, routes or agreements."""
    for table in ("usage", "captures", "routes", "agreements"):
        if store.query_one(f"SELECT 1 AS one FROM {table} WHERE task = ? LIMIT 1", (task,)):
            return True
    return False


def daily_agreement(store: Store, since: float, task: str | None = None) -> list[Row]:
    """(day, task, n, agree) of recorded student/teacher comparisons (audits and shadow runs)."""
    where, params = ("ts >= ? AND task = ?", (since, task)) if task is not None else ("ts >= ?", (since,))
    return store.query(
        f"SELECT {DAY_SQL} AS day, task, COUNT(*) AS n, SUM(agree) AS agree FROM agreements WHERE {where}"
        " GROUP BY day, task ORDER BY day, task",
        params,
    )


def daily_audits(store: Store, since: float, task: str | None = None) -> list[Row]:
    """(day, task, audits, cost_usd) of the teacher calls that audit students."""
    where = "endpoint = 'audit' AND ts >= ?" + (" AND task = ?" if task is not None else "")
    params = (since, task) if task is not None else (since,)
    return store.query(
        f"SELECT {DAY_SQL} AS day, task, COUNT(*) AS audits, SUM(cost_usd) AS cost_usd FROM usage WHERE {where}"
        " GROUP BY day, task ORDER BY day, task",
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


def spend_per_key(store: Store, since: float) -> list[Row]:
    return store.query(
        f"SELECT key_id, SUM(cost_usd) AS cost_usd, {CALLER_REQUESTS_SQL} AS requests, MAX(ts) AS last_ts"
        " FROM usage WHERE ts >= ? GROUP BY key_id",
        (since,),
    )


def deactivate_route(store: Store, task: str, config_route: Row | None) -> int:
    """Turn a task's route off: the teacher answers it. A stored route is deactivated; a route that exists only
    in config (`config_route`: its policy's columns) gets a stored, inactive row, which overrides it until
    `insource route set` sets the task again. The number of routes changed (0: already off)."""
    if config_route is None:
        return store.execute("UPDATE routes SET active = 0 WHERE task = ? AND active = 1", (task,))
    cols = ["task", *config_route, "active", "updated_at"]
    values = (task, *config_route.values(), 0, 0)
    return store.execute(
        f"INSERT INTO routes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        " ON CONFLICT(task) DO UPDATE SET active = 0 WHERE routes.active = 1",
        values,
    )
