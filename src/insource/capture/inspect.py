"""Read-side helpers for the CLI: tasks, one capture, search, the audit log."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from typing import Any

import orjson

from insource.capture.dataset import known_tasks
from insource.capture.slots import last_user_text
from insource.capture.stats import answer_key, kind_and_reason
from insource.errors import NotFound, NotReady
from insource.store import CALLER_REQUESTS_SQL, REFUSED_SQL, Store, capture_queries


def task_answers(store: Store) -> dict[str, Counter[str]]:
    """Per task: each distinct teacher/student answer (trimmed like the dataset builder, `str.strip`) and how
    many status-200 captures got it. Grouped in SQL first, so each distinct raw answer crosses once; trimmed in
    Python because SQL TRIM strips only spaces (and dialects differ), not newlines or tabs."""
    answers: dict[str, Counter[str]] = defaultdict(Counter)
    rows = store.query(
        "SELECT task, output, COUNT(*) AS n FROM captures "
        "WHERE task IS NOT NULL AND status = 200 AND output IS NOT NULL GROUP BY task, output"
    )
    for r in rows:
        answers[str(r["task"])][answer_key(str(r["output"]))] += int(r["n"])
    return answers


def list_tasks(store: Store) -> list[dict[str, Any]]:
    """Per task: requests and spend (usage), distinct outputs and the kind (captures, as the dataset builder)."""
    usage = {
        r["task"]: r
        for r in store.query(
            f"SELECT task, {CALLER_REQUESTS_SQL} AS requests, {REFUSED_SQL} AS refused,"
            " COALESCE(SUM(cost_usd), 0) AS cost_usd "
            "FROM usage WHERE task IS NOT NULL GROUP BY task"
        )
    }
    answers = task_answers(store)
    out = []
    for task in sorted(set(usage) | set(answers)):
        u, a = usage.get(task), answers.get(task, Counter())
        kind, reason = kind_and_reason(a)
        out.append(
            {
                "task": task,
                "requests": int(u["requests"]) if u else sum(a.values()),
                "refused": int(u["refused"]) if u else 0,
                "cost_usd": round(float(u["cost_usd"]), 8) if u else 0.0,
                "distinct_outputs": len(a),
                "kind": kind,
                "kind_reason": reason,
            }
        )
    return out


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def show_capture(store: Store, capture_id: str) -> dict[str, Any]:
    row = store.query_one("SELECT * FROM captures WHERE id = ?", (capture_id,))
    if row is None:
        raise NotFound(f"no capture with id {capture_id!r}")
    hashes = orjson.loads(row["messages"])
    blobs = {}
    if hashes:
        marks = ",".join("?" * len(set(hashes)))
        for b in store.query(f"SELECT hash, data FROM blobs WHERE hash IN ({marks})", sorted(set(hashes))):
            blobs[b["hash"]] = orjson.loads(b["data"])
    row["messages"] = [blobs.get(h, {"missing_blob": h}) for h in hashes]
    for key in ("params", "redactors", "redactions"):
        row[key] = _json(row[key])
    row["consent"] = bool(row["consent"])
    row["usage"] = store.query_one(
        "SELECT cost_usd, prompt_tokens, completion_tokens, latency_ms, endpoint FROM usage WHERE id = ?",
        (capture_id,),
    )
    return row


def search_captures(
    store: Store, task: str, contains: str, limit: int = 20, *, places: Collection[str] = ("user", "answer")
) -> list[dict[str, Any]]:
    """Captures of `task` with `contains` (case-insensitive for ASCII) in the user's messages or the answer by
    default; `places` picks among system, user, answer and all (see store.capture_queries)."""
    if not contains:
        raise NotReady("--contains must not be empty")
    if limit < 1:
        raise NotReady("--limit must be at least 1")
    if task not in known_tasks(store):
        raise NotReady(f"unknown task {task!r}")
    out = []
    for r in capture_queries.search_captures(store, task, contains, places, limit):
        messages = [orjson.loads(b["data"]) for b in _blobs(store, orjson.loads(r.pop("messages")))]
        r["input"] = last_user_text(messages)
        out.append(r)
    return out


def _blobs(store: Store, hashes: list[str]) -> list[dict[str, Any]]:
    if not hashes:
        return []
    marks = ",".join("?" * len(hashes))
    found = {b["hash"]: b for b in store.query(f"SELECT hash, data FROM blobs WHERE hash IN ({marks})", hashes)}
    return [found[h] for h in hashes if h in found]


def list_audit(store: Store, *, task: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    sql = "SELECT id, ts, action, task, purpose, target, detail FROM audit"
    params: list[Any] = []
    if task is not None:
        sql += " WHERE task = ?"
        params.append(task)
    sql += " ORDER BY ts DESC LIMIT ?"
    params.append(limit)
    rows = store.query(sql, params)
    for r in rows:
        r["detail"] = _json(r["detail"])
    return rows
