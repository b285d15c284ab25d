"""Daily usage rollups, maintained in the same transaction as the records they sum.

Every report reads `usage_daily` (days), never `usage` (requests). One rollup row per local day × tenant × key ×
model × task × served_by × endpoint × imported, with counts (requests, refused, audits, errors), token sums and
costs; `usage_daily_lite` holds the same without the key (with many keys, several times fewer rows) and
`usage_daily_keys` only day × tenant × key × imported (budgets, per-key pages). A query reads the smallest table
that has the columns it groups and filters by (`TABLES`). NULL dimensions are stored as '' (key columns cannot be
NULL); readers turn '' back into None.

**Why days in the reporting timezone, computed at write time** (and not UTC hours bucketed at read time): a
report then reads ~24× fewer rows (with keys × tasks × served_by in the key, the hourly table is nearly as big as
the raw records at 10 M records), and days are exact in every zone, including those with :30 and :45 offsets
that UTC hours cannot split. The price is a rebuild when `[report] timezone` changes: the zone the rollups use is
recorded in `usage_daily_zone`; every batch reads it (inside its transaction, after its inserts, so a
concurrent rebuild is seen), and a store opened with another zone rebuilds the table from the raw records in one
transaction (`ensure_timezone`). Restart running servers after changing the zone.

Imported history (`usage_imports`, one row per bill line) is dated by its own `date` column: it keeps its day
through a rebuild.

Duplicates never count twice: rows written with "ignore duplicates" (spool replays, imports) are inserted one by
one and only the ones actually inserted are rolled up; other rows fail the whole batch on a duplicate.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Sequence
from typing import Any, Protocol
from zoneinfo import ZoneInfo

Row = dict[str, Any]
KEYS = ("day", "tenant", "key_id", "model", "task", "served_by", "endpoint", "imported")
MEASURES = (
    "requests",
    "refused",
    "audits",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_avoided_usd",
)
ROLLED_UP = frozenset({"usage", "usage_imports"})  # tables whose inserted rows feed `usage_daily`
ZONE_SQL = "SELECT zone FROM usage_daily_zone"  # the zone the rollups use (one row)

LITE_KEYS = tuple(k for k in KEYS if k != "key_id")  # `usage_daily_lite`: the same without the key
KEY_KEYS = ("day", "tenant", "key_id", "imported")  # `usage_daily_keys`: per key only (budgets, keys pages)
# Every rollup table and its key columns, smallest first: a query reads the first one that has its columns.
TABLES = (("usage_daily_keys", KEY_KEYS), ("usage_daily_lite", LITE_KEYS), ("usage_daily", KEYS))


def _upsert_values(table: str, keys: tuple[str, ...]) -> str:
    marks = ", ".join("?" * (len(keys) + len(MEASURES)))
    updates = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {table} ({', '.join(keys + MEASURES)}) VALUES ({marks})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


UPSERTS = [(_upsert_values(table, keys), [KEYS.index(k) for k in keys]) for table, keys in TABLES]

# The same classification in SQL (rebuilds) and in Python (`_usage_cell`): keep them in step.
_MEASURES_SQL = """
    SUM(CASE WHEN endpoint = 'audit' THEN 0 ELSE 1 END),
    SUM(CASE WHEN endpoint <> 'audit' AND served_by IS NULL AND attempts = 0 THEN 1 ELSE 0 END),
    SUM(CASE WHEN endpoint = 'audit' THEN 1 ELSE 0 END),
    SUM(CASE WHEN endpoint <> 'audit' AND status >= 400 THEN 1 ELSE 0 END),
    SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens), SUM(reasoning_tokens),
    SUM(cost_usd), SUM(cost_avoided_usd)"""
_DIMS_SQL = "tenant, key_id, COALESCE(model, ''), COALESCE(task, ''), COALESCE(served_by, ''), endpoint"
_DAY_SQL = {
    "sqlite": "strftime('%Y-%m-%d', ts + ?, 'unixepoch')",
    "postgres": "to_char(to_timestamp(ts + ?) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def is_refused(row: Row) -> bool:
    """A caller's request that insource refused itself (rate limit, budget, validation): no teacher or student
    answered and no upstream was called. As `insource.store.REFUSED_SQL`; a record without `attempts` has the
    column's default, 1."""
    attempts = row.get("attempts")
    return row.get("endpoint") != "audit" and row.get("served_by") is None and attempts == 0


# The usage columns a rollup reads, in this order (a row may lack some: then None).
_USAGE_FIELDS = (
    "ts",
    "tenant",
    "key_id",
    "model",
    "task",
    "served_by",
    "endpoint",
    "status",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_avoided_usd",
    "attempts",
)


def _usage_cell(day_of: DayOf, t: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(rollup key, measures) of one usage record, as a tuple in `_USAGE_FIELDS` order (`is_refused` in SQL)."""
    ts, tenant, key_id, model, task, served, endpoint, status, pt, cached, ct, rt, cost, avoided, attempts = t
    audit = endpoint == "audit"
    status = int(status or 200)
    refused = not audit and served is None and attempts == 0
    key = (day_of(float(ts)), tenant, key_id, model or "", task or "", served or "", endpoint, 0)
    return key, (
        0 if audit else 1,
        1 if refused else 0,
        1 if audit else 0,
        1 if not audit and status >= 400 else 0,
        int(pt or 0),
        int(cached or 0),
        int(ct or 0),
        int(rt or 0),
        float(cost or 0.0),
        float(avoided or 0.0),
    )


class DayOf:
    """Local day (ISO text) of a Unix time in one zone; cached per minute (no zone offset is finer)."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self._tz = ZoneInfo(zone)
        self._cache: dict[int, str] = {}

    def __call__(self, ts: float) -> str:
        minute = int(ts // 60)
        day = self._cache.get(minute)
        if day is None:
            if len(self._cache) > 50_000:
                self._cache.clear()
            day = self._cache[minute] = dt.datetime.fromtimestamp(minute * 60, self._tz).date().isoformat()
        return day


class Rollup:
    """The rollup delta of the rows one batch inserted."""

    def __init__(self) -> None:
        self._usage: list[Sequence[Any]] = []  # tuples in `_USAGE_FIELDS` order
        self._imports: list[Row] = []

    def add(self, table: str, cols: Sequence[str], values: Sequence[Sequence[Any]]) -> None:
        if table != "usage":
            self._imports.extend(dict(zip(cols, v, strict=True)) for v in values)
            return
        pos = [cols.index(f) if f in cols else -1 for f in _USAGE_FIELDS]
        if min(pos) >= 0:
            self._usage.extend(map(operator.itemgetter(*pos), values))
        else:
            self._usage.extend(tuple(v[p] if p >= 0 else None for p in pos) for v in values)

    def __bool__(self) -> bool:
        return bool(self._usage or self._imports)

    def upserts(self, day_of: DayOf) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """(SQL, values) per rollup table: one upsert per cell, sorted (concurrent writers lock cells in the same
        order: no deadlock)."""
        cells = self._cells(day_of)
        out = []
        for sql, positions in UPSERTS:
            table: dict[tuple[Any, ...], list[Any]] = {}
            for key, measures in cells.items():
                _add(table, tuple(key[i] for i in positions), measures)
            out.append((sql, [(*key, *table[key]) for key in sorted(table)]))
        return out

    def _cells(self, day_of: DayOf) -> dict[tuple[Any, ...], list[Any]]:
        cells: dict[tuple[Any, ...], list[Any]] = {}
        for t in self._usage:
            _add(cells, *_usage_cell(day_of, t))
        for row in self._imports:
            key = (row["day"], row["tenant"], "", row["model"], row.get("task") or "", "", "import", 1)
            measures = (int(row["requests"]), 0, 0, 0, int(row["prompt_tokens"]), 0)
            _add(cells, key, (*measures, int(row["completion_tokens"]), 0, float(row["cost_usd"]), 0.0))
        return cells


def _add(cells: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...], measures: Sequence[Any]) -> None:
    cell = cells.get(key)
    cells[key] = list(measures) if cell is None else [a + b for a, b in zip(cell, measures, strict=True)]


# -- rebuilding (the reporting timezone changed) --------------------------------------------------------------


class RebuildStore(Protocol):
    dialect: str

    def query_one(self, sql: str, params: Sequence[Any] = ...) -> Row | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> int: ...


def _offset(tz: ZoneInfo, ts: float) -> int:
    off = dt.datetime.fromtimestamp(ts, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def offset_segments(zone: str, start: float, end: float) -> list[tuple[float, float, int]]:
    """[start, end) cut where the zone's UTC offset changes: (from, to, offset seconds), offsets constant within.

    Walks day by day and bisects each change to the second (zone changes happen on whole seconds).
    """
    tz = ZoneInfo(zone)
    segments: list[tuple[float, float, int]] = []
    seg_start, seg_off = start, _offset(tz, start)
    t = start
    while t < end:
        nxt = min(t + 86_400, end)
        if _offset(tz, nxt) != seg_off:  # a change in (t, nxt]: find its second
            lo, hi = t, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset(tz, mid) == seg_off else (lo, mid)
            segments.append((seg_start, hi, seg_off))
            seg_start, seg_off, nxt = hi, _offset(tz, hi), hi
        t = nxt
    segments.append((seg_start, end, seg_off))
    return [s for s in segments if s[1] > s[0]]


def _upsert_select(dialect: str, select: str) -> str:
    cols = ", ".join(KEYS + MEASURES)
    updates = ", ".join(f"{m} = usage_daily.{m} + excluded.{m}" for m in MEASURES)
    return f"INSERT INTO usage_daily ({cols}) {select} ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {updates}"


def rebuild(store: RebuildStore, zone: str) -> None:
    """Recompute `usage_daily` from the raw records with days in `zone`. Call inside a store transaction."""
    if store.dialect == "postgres":  # no record is written meanwhile (its rollup would use the old zone)
        store.execute("LOCK TABLE usage, usage_imports IN SHARE ROW EXCLUSIVE MODE")
    for table, _ in TABLES:
        store.execute(f"DELETE FROM {table}")
    span = store.query_one("SELECT MIN(ts) AS lo, MAX(ts) AS hi FROM usage")
    if span and span["lo"] is not None:
        lo, hi = float(span["lo"]), float(span["hi"])
        for start, end, off in offset_segments(zone, float(int(lo)), float(int(hi) + 1)):
            day = _DAY_SQL[store.dialect]
            select = (
                f"SELECT {day}, {_DIMS_SQL}, 0, {_MEASURES_SQL} FROM usage WHERE ts >= ? AND ts < ?"
                " GROUP BY 1, 2, 3, 4, 5, 6, 7"
            )
            store.execute(_upsert_select(store.dialect, select), (off, start, end))
    select = (
        "SELECT day, tenant, '', model, COALESCE(task, ''), '', 'import', 1, SUM(requests), 0, 0, 0,"
        " SUM(prompt_tokens), 0, SUM(completion_tokens), 0, SUM(cost_usd), 0 FROM usage_imports WHERE 1 = 1"
        " GROUP BY day, tenant, model, COALESCE(task, '')"
    )
    store.execute(_upsert_select(store.dialect, select))
    sums = ", ".join(f"SUM({m})" for m in MEASURES)
    for table, keys in TABLES[:-1]:  # the smaller tables, from the full one
        cols = ", ".join(keys)
        insert = f"INSERT INTO {table} ({cols}, {', '.join(MEASURES)})"
        store.execute(f"{insert} SELECT {cols}, {sums} FROM usage_daily GROUP BY {cols}")
    store.execute("UPDATE usage_daily_zone SET zone = ?", (zone,))
