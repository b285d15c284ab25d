"""Queries over feedback (`POST /v1/feedback`): finding the request it is about, storing it, listing it, and
reading it back per captured answer for datasets.

A request is named by the id its caller saw (`usage.request_id`, the response's X-Request-Id). Callers may send
the same X-Request-Id twice; feedback then applies to the most recent of those requests. Teacher audits
(endpoint 'audit') share their request's id but are not answers a caller saw: never matched.
"""

from __future__ import annotations

from insource.store.sqlite import Row, Store

COLUMNS = (
    "id",
    "ts",
    "tenant",
    "key_id",
    "request_id",
    "usage_id",
    "task",
    "score",
    "label",
    "correction",
    "comment",
    "redactions",
)

_FIND_REQUEST = """
SELECT id, task FROM usage
WHERE request_id = ? AND tenant = ? AND endpoint <> 'audit'
ORDER BY ts DESC, id DESC LIMIT 1
"""
_LIST = """
SELECT id, request_id, task, score, label, correction, comment, ts FROM feedback
{where}
ORDER BY ts DESC, id DESC LIMIT ?
"""
_FOR_TASK = """
SELECT usage_id, ts, id, score, correction FROM feedback
WHERE task = ? ORDER BY ts, id
"""


def find_request(store: Store, tenant: str, request_id: str) -> Row | None:
    """The usage record (`id`, `task`) of the tenant's most recent request with this id, or None."""
    return store.query_one(_FIND_REQUEST, (request_id, tenant))


def insert_feedback(store: Store, row: Row) -> None:
    """Store one feedback row (the keys of `COLUMNS`, in any order)."""
    values = tuple(row[c] for c in COLUMNS)
    marks = ", ".join("?" * len(COLUMNS))
    store.execute(f"INSERT INTO feedback ({', '.join(COLUMNS)}) VALUES ({marks})", values)


def list_feedback(store: Store, task: str | None = None, limit: int = 1000) -> list[Row]:
    """The most recent feedback first (at most `limit`), of one task or of all."""
    where, params = ("WHERE task = ?", [task]) if task is not None else ("", [])
    return store.query(_LIST.format(where=where), (*params, limit))


def feedback_for_task(store: Store, task: str) -> dict[str, list[Row]]:
    """A task's feedback grouped by usage record (= capture) id, oldest first within each."""
    out: dict[str, list[Row]] = {}
    for row in store.query(_FOR_TASK, (task,)):
        out.setdefault(str(row["usage_id"]), []).append(row)
    return out
