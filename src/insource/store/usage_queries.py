"""Usage and spend queries over the daily rollups (`usage_daily`): what every report reads.

The API, small on purpose:

- `usage_by(store, by, flt)`: totals grouped by up to a few dimensions (`DIMENSIONS`), filtered by `UsageFilter`;
- `daily_spend(store, flt, by=None)`: the same per day (and per `by`), oldest day first;
- `usage_total(store, flt)`: one row of totals;
- `day_span(store)`: the first and last day with any usage (None when there is none);
- `today(store)`: today's date in the reporting timezone (`store.report_timezone()`);
- `existing_import_ids(store, ids)`: which imported bill lines are already there (`usage import`).

Days are local days in the reporting timezone (`[report] timezone`): a `day` key is "YYYY-MM-DD", a `week` key
the week's Monday ("YYYY-MM-DD"), a `month` key "YYYY-MM". Dimension values that the record did not have (no task,
no model, imported history without key or served_by) are None. `served_by` of a request nobody answered (insource
refused it, or every upstream failed) is "insource", as its response header says. `provider` is the part of
served_by before ':' ("openai" for "openai:gpt-4o-mini"); students (served_by without ':', e.g. "intent@v2") and
refusals are provider "insource".

Counts in a row: `requests` are the callers' requests, refused ones included (`refused` says how many insource
refused itself before any teacher or student: rate limit, budget, validation; `spend` shows requests − refused);
`audits` are teacher audits of student answers (spend, not callers' requests); `errors` callers' requests
answered with a status ≥ 400. Imported history counts as requests and spend (`imported` dimension: True).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from insource.store import CALLER_REQUESTS_SQL, REFUSED_SQL
from insource.store.rollups import MEASURES, TABLES

DIMENSIONS = ("tenant", "key", "model", "provider", "task", "served_by", "endpoint", "imported", "day", "week", "month")
TIME_DIMENSIONS = ("day", "week", "month")
STUDENT_PROVIDER = "insource"

# dimension → the rollup column it is computed from (provider, week and month are folded in Python)
_SOURCE = {
    "tenant": "tenant",
    "key": "key_id",
    "model": "model",
    "provider": "served_by",
    "task": "task",
    "served_by": "served_by",
    "endpoint": "endpoint",
    "imported": "imported",
    "day": "day",
    "week": "day",
    "month": "day",
}


class QueryStore(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ...) -> list[dict[str, Any]]: ...

    def report_timezone(self) -> str: ...


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which rollup rows count. Days are inclusive local days; None means no limit on that side."""

    since: dt.date | None = None
    until: dt.date | None = None
    tenant: str | None = None
    key: str | None = None
    model: str | None = None
    task: str | None = None
    served_by: str | None = None
    provider: str | None = None
    endpoint: str | None = None
    imported: bool | None = None


@dataclass(slots=True)
class UsageRow:
    """Totals for one group: `keys` maps each requested dimension to its value."""

    keys: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    refused: int = 0
    audits: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    cost_avoided_usd: float = 0.0

    def add(self, raw: dict[str, Any]) -> None:
        for name in MEASURES:
            value = raw.get(name) or 0
            setattr(self, name, getattr(self, name) + (float(value) if name.endswith("_usd") else int(value)))

    def as_dict(self) -> dict[str, Any]:
        """The keys, then every measure (JSON-ready)."""
        out = dict(self.keys)
        for f in fields(self):
            if f.name != "keys":
                out[f.name] = getattr(self, f.name)
        return out


def provider_of(served_by: str | None) -> str | None:
    """The provider that served a request: the part before ':'; students are served by insource itself."""
    if not served_by:
        return None
    return served_by.split(":", 1)[0] if ":" in served_by else STUDENT_PROVIDER


def _served_by(raw: dict[str, Any]) -> str | None:
    """A rollup row's served_by: '' is "insource" (nobody answered) for gateway records, None for imports."""
    served = raw["served_by"]
    return served or (None if raw["imported"] else STUDENT_PROVIDER)


def _value(dim: str, raw: Any) -> Any:
    if dim == "imported":
        return bool(raw)
    if dim == "provider":
        return provider_of(raw)
    if dim == "week":
        day = dt.date.fromisoformat(raw)
        return (day - dt.timedelta(days=day.weekday())).isoformat()
    if dim == "month":
        return str(raw)[:7]
    return raw if raw != "" else None  # served_by is already resolved (`_served_by`)


def _table(columns: set[str]) -> str:
    """The smallest rollup table with these columns."""
    return next(table for table, keys in TABLES if columns <= set(keys))


def _filter_columns(flt: UsageFilter) -> set[str]:
    cols = {"day"} if flt.since is not None or flt.until is not None else set()
    for dim in ("tenant", "key", "model", "task", "served_by", "endpoint", "imported"):
        if getattr(flt, dim) is not None:
            cols.add(_SOURCE[dim])
    if flt.provider is not None or flt.served_by is not None:
        cols |= {"served_by", "imported"}
    return cols


def _where(flt: UsageFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if flt.since is not None:
        clauses.append("day >= ?")
        params.append(flt.since.isoformat())
    if flt.until is not None:
        clauses.append("day <= ?")
        params.append(flt.until.isoformat())
    for dim, col in (
        ("tenant", "tenant"),
        ("key", "key_id"),
        ("model", "model"),
        ("task", "task"),
        ("served_by", "served_by"),
        ("endpoint", "endpoint"),
    ):
        value = getattr(flt, dim)
        if value is not None:
            nobody = dim == "served_by" and value == STUDENT_PROVIDER  # also the records nobody answered
            clauses.append("(served_by = ? OR (served_by = '' AND imported = 0))" if nobody else f"{col} = ?")
            params.append(value)
    if flt.imported is not None:
        clauses.append("imported = ?")
        params.append(int(flt.imported))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _sort_key(row: UsageRow, by: Sequence[str]) -> tuple[Any, ...]:
    times = tuple(row.keys[d] for d in by if d in TIME_DIMENSIONS)
    others = tuple("" if row.keys[d] is None else str(row.keys[d]) for d in by if d not in TIME_DIMENSIONS)
    return (*times, -row.cost_usd, *others)


def usage_by(store: QueryStore, by: Sequence[str], flt: UsageFilter = UsageFilter()) -> list[UsageRow]:
    """Totals per group of `by` (dimension names from `DIMENSIONS`; none: one total row, if any usage).

    Sorted by the time dimensions first (oldest first), then by cost, highest first.
    """
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension {unknown[0]!r}: use {', '.join(DIMENSIONS)}")
    served = flt.provider is not None or "served_by" in by or "provider" in by
    cols = sorted({_SOURCE[d] for d in by} | ({"served_by", "imported"} if served else set()))
    where, params = _where(flt)
    sums = ", ".join(f"SUM({m}) AS {m}" for m in MEASURES)
    select = ", ".join([*cols, sums])
    table = _table(set(cols) | _filter_columns(flt))
    sql = f"SELECT {select} FROM {table}{where}" + (f" GROUP BY {', '.join(cols)}" if cols else "")
    groups: dict[tuple[Any, ...], UsageRow] = {}
    for raw in store.query(sql, params):
        if raw.get("requests") is None and raw.get("audits") is None:
            continue  # no rows at all (an aggregate without GROUP BY still answers one row)
        if served:
            raw["served_by"] = _served_by(raw)
        if flt.provider is not None and provider_of(raw["served_by"]) != flt.provider:
            continue
        keys = {d: _value(d, raw[_SOURCE[d]]) for d in by}
        ident = tuple(keys.values())
        row = groups.get(ident)
        if row is None:
            row = groups[ident] = UsageRow(keys)
        row.add(raw)
    return sorted(groups.values(), key=lambda r: _sort_key(r, by))


def daily_spend(store: QueryStore, flt: UsageFilter = UsageFilter(), by: str | None = None) -> list[UsageRow]:
    """Totals per local day (`keys["day"]`, "YYYY-MM-DD"), and per `by` when given; oldest day first.

    Days without usage are absent (fill them in when a series needs every day).
    """
    return usage_by(store, ["day", by] if by else ["day"], flt)


def usage_total(store: QueryStore, flt: UsageFilter = UsageFilter()) -> UsageRow:
    """All usage matching `flt` as one row (zeros when there is none)."""
    rows = usage_by(store, [], flt)
    return rows[0] if rows else UsageRow()


def day_span(store: QueryStore, flt: UsageFilter = UsageFilter()) -> tuple[dt.date, dt.date] | None:
    """The first and the last local day with usage matching `flt`, or None."""
    where, params = _where(flt)
    table = _table({"day"} | _filter_columns(flt))
    rows = store.query(f"SELECT MIN(day) AS lo, MAX(day) AS hi FROM {table}{where}", params)
    if not rows or rows[0]["lo"] is None:
        return None
    return dt.date.fromisoformat(rows[0]["lo"]), dt.date.fromisoformat(rows[0]["hi"])


def existing_import_ids(store: QueryStore, ids: Sequence[str]) -> set[str]:
    """The ids among `ids` already in `usage_imports` (imported bill lines)."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" * len(chunk))
        found.update(r["id"] for r in store.query(f"SELECT id FROM usage_imports WHERE id IN ({marks})", chunk))
    return found


def month_to_date_from_records(store: QueryStore, start: float) -> dict[str, float]:
    """Spend since `start` (a Unix time) per budget scope ("key:ID", "tenant:NAME"), from the raw records: for
    budgets when the rollups' days are not UTC days."""
    out: dict[str, float] = {}
    for row in store.query("SELECT key_id, SUM(cost_usd) AS c FROM usage WHERE ts >= ? GROUP BY key_id", (start,)):
        out[f"key:{row['key_id']}"] = float(row["c"] or 0.0)
    for row in store.query("SELECT tenant, SUM(cost_usd) AS c FROM usage WHERE ts >= ? GROUP BY tenant", (start,)):
        out[f"tenant:{row['tenant']}"] = float(row["c"] or 0.0)
    return out


def today(store: QueryStore, now: float | None = None) -> dt.date:
    """Today (or the day of `now`, a Unix time) in the reporting timezone."""
    tz = ZoneInfo(store.report_timezone())
    return (dt.datetime.now(tz) if now is None else dt.datetime.fromtimestamp(now, tz)).date()


# -- raw usage records (not the rollups) ------------------------------------------------------------------------
def task_usage(store: QueryStore) -> list[Any]:
    """Per task: the callers' requests, the refused ones and the spend, from the raw records."""
    return store.query(
        f"SELECT task, {CALLER_REQUESTS_SQL} AS requests, {REFUSED_SQL} AS refused,"
        " COALESCE(SUM(cost_usd), 0) AS cost_usd "
        "FROM usage WHERE task IS NOT NULL GROUP BY task"
    )


def usage_record(store: QueryStore, record_id: str) -> Any:
    """A usage record's cost, tokens, latency and endpoint (None when there is none)."""
    rows = store.query(
        "SELECT cost_usd, prompt_tokens, completion_tokens, latency_ms, endpoint FROM usage WHERE id = ?",
        (record_id,),
    )
    return rows[0] if rows else None


def window_spend(store: QueryStore, task: str, start: float, end: float) -> dict[str, float]:
    """Records, spend and cost avoided of `task` in [start, end] (Unix times)."""
    rows = store.query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(cost_usd), 0) AS cost, COALESCE(SUM(cost_avoided_usd), 0) AS avoided"
        " FROM usage WHERE task=? AND ts >= ? AND ts <= ?",
        (task, start, end),
    )
    row = rows[0]
    return {"records": row["n"], "cost_usd": row["cost"], "avoided_usd": row["avoided"]}


def window_count(store: QueryStore, start: float, end: float) -> int:
    """How many usage records lie in [start, end] (Unix times)."""
    rows = store.query("SELECT COUNT(*) AS n FROM usage WHERE ts >= ? AND ts <= ?", (start, end))
    return int(rows[0]["n"]) if rows else 0


def window_by_task(store: QueryStore, start: float, end: float) -> list[Any]:
    """Per task in [start, end]: records (n), prompt (p) and completion (c) tokens, spend (cost)."""
    return store.query(
        "SELECT task, COUNT(*) AS n, SUM(prompt_tokens) AS p, SUM(completion_tokens) AS c, SUM(cost_usd) AS cost"
        " FROM usage WHERE ts >= ? AND ts <= ? GROUP BY task",
        (start, end),
    )


def task_teacher_model(store: QueryStore, task: str) -> str | None:
    """The model alias callers sent most of `task`'s requests to (its teacher), or None."""
    rows = store.query(
        "SELECT model, COUNT(*) AS n FROM usage WHERE task = ? AND endpoint = 'chat' AND model IS NOT NULL"
        " GROUP BY model ORDER BY n DESC, model LIMIT 1",
        (task,),
    )
    return str(rows[0]["model"]) if rows else None
