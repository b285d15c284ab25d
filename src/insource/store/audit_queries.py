"""Queries over the audit log (`audit`): who built which dataset, for what purpose, from where.

Written with `?` placeholders; `PgStore` translates them, so the same functions serve SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from insource.store.sqlite import Row, Store


def insert_audit(
    store: Store, *, id: str, ts: float, action: str, task: str, purpose: str | None, target: str, detail: str
) -> None:
    store.execute(
        "INSERT INTO audit (id, ts, action, task, purpose, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (id, ts, action, task, purpose, target, detail),
    )


def list_audit(store: Store, task: str | None, limit: int) -> list[Row]:
    """The newest `limit` entries (of `task`, when given), newest first; `detail` as stored (JSON text)."""
    sql = "SELECT id, ts, action, task, purpose, target, detail FROM audit"
    params: list[Any] = []
    if task is not None:
        sql += " WHERE task = ?"
        params.append(task)
    sql += " ORDER BY ts DESC LIMIT ?"
    params.append(limit)
    return store.query(sql, params)


def dataset_builds(store: Store, task: str) -> list[Row]:
    """The `dataset.build` entries of `task`, newest first (target, purpose, detail)."""
    return store.query(
        "SELECT target, purpose, detail FROM audit WHERE task=? AND action='dataset.build' ORDER BY ts DESC", (task,)
    )
