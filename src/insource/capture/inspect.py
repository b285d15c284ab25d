"""Read-side helpers for the CLI: tasks, one capture, search, the audit log."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from typing import Any

import orjson

from insource.capture.dataset import known_tasks
from insource.capture.slots import last_user_text
from insource.capture.stats import answer_key, distillable, kind_and_reason
from insource.errors import NotFound, NotReady
from insource.store import Store, audit_queries, capture_queries, usage_queries


def task_answers(store: Store) -> dict[str, Counter[str]]:
    """Per task: each distinct teacher/student answer (trimmed like the dataset builder, `str.strip`) and how
    many status-200 captures got it. Grouped in SQL first, so each distinct raw answer crosses once; trimmed in
    Python because SQL TRIM strips only spaces (and dialects differ), not newlines or tabs."""
    answers: dict[str, Counter[str]] = defaultdict(Counter)
    for r in capture_queries.answer_counts(store):
        answers[str(r["task"])][answer_key(str(r["output"]))] += int(r["n"])
    return answers


def list_tasks(store: Store) -> list[dict[str, Any]]:
    """Per task: requests and spend (usage), distinct outputs and the kind (captures, as the dataset builder)."""
    usage = {r["task"]: r for r in usage_queries.task_usage(store)}
    answers = task_answers(store)
    lengths = capture_queries.task_token_lengths(store)
    out = []
    for task in sorted(set(usage) | set(answers)):
        u, a = usage.get(task), answers.get(task, Counter())
        kind, reason = kind_and_reason(a)
        can, why = distillable(kind, *lengths.get(task, _estimated_lengths(a)))
        out.append(
            {
                "task": task,
                "requests": int(u["requests"]) if u else sum(a.values()),
                "refused": int(u["refused"]) if u else 0,
                "cost_usd": round(float(u["cost_usd"]), 8) if u else 0.0,
                "distinct_outputs": len(a),
                "kind": kind,
                "kind_reason": reason,
                "distillable": can,
                "distillable_reason": why,
            }
        )
    return out


def _estimated_lengths(answers: Counter[str], cap: int = 5000) -> tuple[list[int], list[int]]:
    """No token counts recorded (e.g. imported captures): answer tokens estimated at 4 characters a token."""
    estimated = [max(1, -(-len(a) // 4)) for a, n in answers.most_common() for _ in range(min(n, cap))][:cap]
    return ([0] * len(estimated) if estimated else []), estimated


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def show_capture(store: Store, capture_id: str) -> dict[str, Any]:
    row = capture_queries.capture(store, capture_id)
    if row is None:
        raise NotFound(f"no capture with id {capture_id!r}")
    hashes = orjson.loads(row["messages"])
    blobs = {h: orjson.loads(data) for h, data in capture_queries.blobs(store, hashes).items()}
    row["messages"] = [blobs.get(h, {"missing_blob": h}) for h in hashes]
    for key in ("params", "redactors", "redactions"):
        row[key] = _json(row[key])
    row["consent"] = bool(row["consent"])
    row["usage"] = usage_queries.usage_record(store, capture_id)
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
        hashes = orjson.loads(r.pop("messages"))
        found = capture_queries.blobs(store, hashes)
        messages = [orjson.loads(found[h]) for h in hashes if h in found]
        r["input"] = last_user_text(messages)
        out.append(r)
    return out


def list_audit(store: Store, *, task: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    rows = audit_queries.list_audit(store, task, limit)
    for r in rows:
        r["detail"] = _json(r["detail"])
    return rows
