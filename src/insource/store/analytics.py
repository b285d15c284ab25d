"""Queries behind the money reports (forecast, savings, make-or-buy): aggregates of the usage table.

Times come back in 15-minute buckets (bucket × 900 = the bucket's first unix second), so the caller can cut
days in any reporting timezone, DST included, without SQL date functions that differ between SQLite and
PostgreSQL. Every offset in use today is a multiple of 15 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from insource.store import CALLER_REQUESTS_SQL, Row, Store

BUCKET_S = 900

# A usage record answered by a student: not an audit, and served by a registry name (`TASK@vN`), never by
# `PROVIDER:MODEL` (a teacher) or nobody (a refused request).
STUDENT_SQL = "(endpoint <> 'audit' AND served_by IS NOT NULL AND served_by <> '' AND served_by NOT LIKE '%:%')"


@dataclass(frozen=True, slots=True)
class SavingsRow:
    """Savings aggregates of one group (a task, or a 15-minute bucket of one task)."""

    group: str | int
    requests: int
    insourced: int
    avoided_usd: float
    student_usd: float
    audit_usd: float


@dataclass(frozen=True, slots=True)
class TaskUsage:
    """One task's traffic in a window: caller requests, what the teacher cost, what students avoided."""

    requests: int
    insourced: int
    first_ts: float | None
    teacher_usd: float
    avoided_usd: float
    student_usd: float
    top_student: str | None


def _bucket(store: Store) -> str:
    """The 15-minute bucket of `ts`, rounded down (PostgreSQL's CAST rounds, SQLite's truncates)."""
    return f"FLOOR(ts / {BUCKET_S})" if store.dialect == "postgres" else f"CAST(ts / {BUCKET_S} AS INTEGER)"


def cost_buckets(store: Store, since: float, until: float) -> list[tuple[int, float]]:
    """(bucket, spend in USD) of every record in [since, until), audits and student CPU included."""
    rows = store.query(
        f"SELECT {_bucket(store)} AS b, SUM(cost_usd) AS c FROM usage WHERE ts >= ? AND ts < ? GROUP BY b ORDER BY b",
        (since, until),
    )
    return [(int(r["b"]), float(r["c"] or 0.0)) for r in rows]


def first_usage_ts(store: Store) -> float | None:
    row = store.query_one("SELECT MIN(ts) AS t FROM usage")
    return None if row is None or row["t"] is None else float(row["t"])


def spend_by_scope(store: Store, since: float, until: float) -> dict[str, float]:
    """Spend per budget scope ("key:ID", "tenant:NAME") in [since, until)."""
    out: dict[str, float] = {}
    for column, prefix in (("key_id", "key"), ("tenant", "tenant")):
        rows = store.query(
            f"SELECT {column} AS s, SUM(cost_usd) AS c FROM usage WHERE ts >= ? AND ts < ? GROUP BY {column}",
            (since, until),
        )
        out.update({f"{prefix}:{r['s']}": float(r["c"] or 0.0) for r in rows})
    return out


_SAVINGS_COLUMNS = (
    f"{CALLER_REQUESTS_SQL} AS requests,"
    f" SUM(CASE WHEN {STUDENT_SQL} THEN 1 ELSE 0 END) AS insourced,"
    " SUM(CASE WHEN endpoint <> 'audit' THEN cost_avoided_usd ELSE 0 END) AS avoided,"
    f" SUM(CASE WHEN {STUDENT_SQL} THEN cost_usd ELSE 0 END) AS student,"
    " SUM(CASE WHEN endpoint = 'audit' THEN cost_usd ELSE 0 END) AS audit"
)


def _savings_row(group: str | int, r: Row) -> SavingsRow:
    return SavingsRow(
        group=group,
        requests=int(r["requests"] or 0),
        insourced=int(r["insourced"] or 0),
        avoided_usd=float(r["avoided"] or 0.0),
        student_usd=float(r["student"] or 0.0),
        audit_usd=float(r["audit"] or 0.0),
    )


def savings_by_task(store: Store, since: float, until: float) -> list[SavingsRow]:
    """Savings aggregates per task (records without a task cannot be insourced and are left out)."""
    rows = store.query(
        f"SELECT task, {_SAVINGS_COLUMNS} FROM usage WHERE task IS NOT NULL AND ts >= ? AND ts < ?"
        " GROUP BY task ORDER BY task",
        (since, until),
    )
    return [_savings_row(str(r["task"]), r) for r in rows]


def savings_by_bucket(store: Store, since: float, until: float) -> list[SavingsRow]:
    """Savings aggregates per 15-minute bucket (records with a task only)."""
    rows = store.query(
        f"SELECT {_bucket(store)} AS b, {_SAVINGS_COLUMNS} FROM usage WHERE task IS NOT NULL AND ts >= ? AND ts < ?"
        " GROUP BY b ORDER BY b",
        (since, until),
    )
    return [_savings_row(int(r["b"]), r) for r in rows]


def task_usage(store: Store, task: str, since: float, until: float) -> TaskUsage:
    """One task's traffic in [since, until): the make-or-buy inputs."""
    row = store.query_one(
        f"SELECT {CALLER_REQUESTS_SQL} AS requests, SUM(CASE WHEN {STUDENT_SQL} THEN 1 ELSE 0 END) AS insourced,"
        " MIN(ts) AS first_ts,"
        f" SUM(CASE WHEN endpoint <> 'audit' AND NOT {STUDENT_SQL} THEN cost_usd ELSE 0 END) AS teacher,"
        " SUM(CASE WHEN endpoint <> 'audit' THEN cost_avoided_usd ELSE 0 END) AS avoided,"
        f" SUM(CASE WHEN {STUDENT_SQL} THEN cost_usd ELSE 0 END) AS student"
        " FROM usage WHERE task = ? AND ts >= ? AND ts < ?",
        (task, since, until),
    )
    top = store.query_one(
        f"SELECT served_by, COUNT(*) AS n FROM usage WHERE task = ? AND ts >= ? AND ts < ? AND {STUDENT_SQL}"
        " GROUP BY served_by ORDER BY n DESC, served_by DESC LIMIT 1",
        (task, since, until),
    )
    r = row or {}
    return TaskUsage(
        requests=int(r.get("requests") or 0),
        insourced=int(r.get("insourced") or 0),
        first_ts=None if r.get("first_ts") is None else float(r["first_ts"]),
        teacher_usd=float(r.get("teacher") or 0.0),
        avoided_usd=float(r.get("avoided") or 0.0),
        student_usd=float(r.get("student") or 0.0),
        top_student=None if top is None else str(top["served_by"]),
    )


def known_tasks(store: Store) -> list[str]:
    """Every task that usage records carry."""
    return [str(r["task"]) for r in store.query("SELECT DISTINCT task FROM usage WHERE task IS NOT NULL ORDER BY task")]
