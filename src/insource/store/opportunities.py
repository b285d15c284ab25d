"""Queries of the opportunity finder and of template assignment: captures streamed in pages, message blobs,
mined templates and the templates assigned to a task."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from insource.store.sqlite import Row, Store

PAGE = 2000
_BLOB_CHUNK = 500

_PAGE_SQL = """
SELECT c.id, c.ts, c.task, c.tenant, c.messages, c.output, c.status, c.provider, c.params,
       COALESCE(u.cost_usd, 0) AS cost_usd
FROM captures c LEFT JOIN usage u ON u.id = c.id
WHERE (c.ts, c.id) > (?, ?){extra}
ORDER BY c.ts, c.id
LIMIT ?
"""

_REPEATING_SQLITE = """
SELECT j.value AS hash FROM captures c, json_each(c.messages) j
GROUP BY j.value HAVING COUNT(*) >= ?
"""
_REPEATING_PG = """
SELECT j.value AS hash FROM captures c, jsonb_array_elements_text(c.messages::jsonb) AS j(value)
GROUP BY j.value HAVING COUNT(*) >= ?
"""


def capture_span(store: Store) -> tuple[int, float | None, float | None]:
    """(captures, first ts, last ts)."""
    row = store.query_one("SELECT COUNT(*) AS n, MIN(ts) AS lo, MAX(ts) AS hi FROM captures")
    if row is None or not row["n"]:
        return 0, None, None
    return int(row["n"]), float(row["lo"]), float(row["hi"])


def repeating_blobs(store: Store, min_count: int) -> set[str]:
    """Message blobs used by at least `min_count` captures: the constant parts of prompts (system prompts,
    instructions, few-shot examples)."""
    sql = _REPEATING_PG if store.dialect == "postgres" else _REPEATING_SQLITE
    return {str(r["hash"]) for r in store.query(sql, (min_count,))}


def iter_capture_pages(
    store: Store, *, untagged_only: bool = False, since: float | None = None, until: float | None = None
) -> Iterator[list[Any]]:
    """All captures (joined with their usage cost) in (ts, id) order, one page at a time: memory stays flat."""
    extra, params = "", []
    if untagged_only:
        extra += " AND c.task IS NULL"
    if since is not None:
        extra += " AND c.ts >= ?"
        params.append(since)
    if until is not None:
        extra += " AND c.ts < ?"
        params.append(until)
    sql = _PAGE_SQL.format(extra=extra)
    ts, cid = float("-inf"), ""
    while True:
        rows = _rows(store, sql, (ts, cid, *params, PAGE))
        if not rows:
            return
        yield rows
        if len(rows) < PAGE:
            return
        ts, cid = float(rows[-1]["ts"]), str(rows[-1]["id"])


def _rows(store: Store, sql: str, params: Sequence[Any]) -> list[Any]:
    """Rows readable by column name. On SQLite the driver's own rows (no dict per row: this loop reads millions)."""
    if store.dialect == "sqlite":
        return store.conn().execute(sql, params).fetchall()
    return store.query(sql, params)


def fetch_blobs(store: Store, hashes: Sequence[str]) -> dict[str, Any]:
    """hash -> the parsed message (missing hashes are absent)."""
    out: dict[str, Any] = {}
    loads = orjson.loads
    for start in range(0, len(hashes), _BLOB_CHUNK):
        chunk = list(hashes[start : start + _BLOB_CHUNK])
        marks = ",".join("?" * len(chunk))
        for b in _rows(store, f"SELECT hash, data FROM blobs WHERE hash IN ({marks})", chunk):
            out[b["hash"]] = loads(b["data"])
    return out


# -- mined templates ---------------------------------------------------------------------------
def save_templates(store: Store, rows: Sequence[Row]) -> None:
    """Remember the templates of the last mining run (upsert by id), so `tasks assign --template ID` finds them."""
    if not rows:
        return
    ids = [r["id"] for r in rows]
    for start in range(0, len(ids), _BLOB_CHUNK):
        chunk = ids[start : start + _BLOB_CHUNK]
        store.execute(f"DELETE FROM templates WHERE id IN ({','.join('?' * len(chunk))})", chunk)
    store.insert_many("templates", rows)


def get_template(store: Store, template_id: str) -> Row | None:
    return store.query_one("SELECT id, text, template, kind, requests FROM templates WHERE id = ?", (template_id,))


# -- assignments -------------------------------------------------------------------------------
def assign(store: Store, template_id: str, task: str, template_json: str) -> None:
    store.execute("DELETE FROM template_tasks WHERE template_id = ?", (template_id,))
    store.insert_many(
        "template_tasks",
        [{"template_id": template_id, "task": task, "template": template_json, "assigned_at": time.time()}],
    )


def assignments(store: Store) -> list[Row]:
    """Assigned templates, oldest first (the gateway tries them in this order)."""
    return store.query("SELECT template_id, task, template, assigned_at FROM template_tasks ORDER BY assigned_at")


def tag_requests(store: Store, ids: Sequence[str], task: str) -> int:
    """Give untagged captures (and their usage records) a task; returns how many captures changed."""
    changed = 0
    for start in range(0, len(ids), _BLOB_CHUNK):
        chunk = list(ids[start : start + _BLOB_CHUNK])
        marks = ",".join("?" * len(chunk))
        changed += store.execute(f"UPDATE captures SET task = ? WHERE task IS NULL AND id IN ({marks})", [task, *chunk])
        store.execute(f"UPDATE usage SET task = ? WHERE task IS NULL AND id IN ({marks})", [task, *chunk])
    return changed


def record_audit(store: Store, action: str, task: str, target: str, detail: dict[str, Any]) -> None:
    row = {
        "id": f"{action}-{time.time_ns()}",
        "ts": time.time(),
        "action": action,
        "task": task,
        "purpose": None,
        "target": target,
        "detail": orjson.dumps(detail).decode(),
    }
    store.insert_many("audit", [row])
