"""Queries for the Batch API: the tenant that owns each upstream file and batch, and batch metering.

Every read is scoped to a tenant: another tenant's file or batch is not found, exactly as an unknown one.
`object` columns hold the last upstream JSON object seen (listings answer from them without an upstream call).
"""

from __future__ import annotations

from collections.abc import Sequence

from insource.store.sqlite import Row, Store

FILE_COLUMNS = (
    "id",
    "tenant",
    "key_id",
    "provider",
    "purpose",
    "model",
    "upstream_model",
    "endpoint",
    "lines",
    "tasks",
    "object",
    "created_at",
)
BATCH_COLUMNS = (
    "id",
    "tenant",
    "key_id",
    "provider",
    "model",
    "upstream_model",
    "endpoint",
    "input_file_id",
    "task",
    "status",
    "object",
    "created_at",
)


def _insert(store: Store, table: str, columns: Sequence[str], row: Row, ignore: bool = False) -> None:
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    marks = ", ".join("?" * len(columns))
    store.execute(f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({marks})", tuple(row[c] for c in columns))


def insert_file(store: Store, row: Row, *, ignore: bool = False) -> None:
    _insert(store, "batch_files", FILE_COLUMNS, row, ignore)


def get_file(store: Store, tenant: str, file_id: str) -> Row | None:
    return store.query_one("SELECT * FROM batch_files WHERE id = ? AND tenant = ?", (file_id, tenant))


def list_files(store: Store, tenant: str, purpose: str | None, limit: int) -> list[Row]:
    sql, params = "WHERE tenant = ?", [tenant]
    if purpose is not None:
        sql, params = "WHERE tenant = ? AND purpose = ?", [tenant, purpose]
    return store.query(f"SELECT * FROM batch_files {sql} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))


def delete_file(store: Store, tenant: str, file_id: str) -> None:
    store.execute("DELETE FROM batch_files WHERE id = ? AND tenant = ?", (file_id, tenant))


def insert_batch(store: Store, row: Row) -> None:
    _insert(store, "batches", BATCH_COLUMNS, row)


def get_batch(store: Store, tenant: str, batch_id: str) -> Row | None:
    return store.query_one("SELECT * FROM batches WHERE id = ? AND tenant = ?", (batch_id, tenant))


def list_batches(store: Store, tenant: str, limit: int) -> list[Row]:
    return store.query(
        "SELECT * FROM batches WHERE tenant = ? ORDER BY created_at DESC, id DESC LIMIT ?", (tenant, limit)
    )


def update_batch(store: Store, batch_id: str, status: str, obj: str) -> None:
    store.execute("UPDATE batches SET status = ?, object = ? WHERE id = ?", (status, obj, batch_id))


def mark_metered(store: Store, batch_id: str, at: float, records: int) -> None:
    """Record that the batch's usage records are written (they are idempotent: a second metering adds none)."""
    store.execute(
        "UPDATE batches SET metered_at = ?, records = ? WHERE id = ? AND metered_at IS NULL", (at, records, batch_id)
    )


def due_batches(store: Store, before: float, limit: int = 100) -> list[Row]:
    """Unmetered batches nobody polled since `before` (every tenant's: the poller works for all)."""
    return store.query(
        "SELECT * FROM batches WHERE metered_at IS NULL AND (polled_at IS NULL OR polled_at < ?)"
        " ORDER BY created_at LIMIT ?",
        (before, limit),
    )


def claim_poll(store: Store, batch_id: str, now: float, before: float) -> bool:
    """Take the turn to poll a batch (one worker of many); False when another took it since `before`."""
    return (
        store.execute(
            "UPDATE batches SET polled_at = ? WHERE id = ? AND (polled_at IS NULL OR polled_at < ?)",
            (now, batch_id, before),
        )
        == 1
    )


def write_records(store: Store, rows: Sequence[tuple[str, Row, bool]]) -> None:
    """A batch's usage records and captures, in one transaction (rollups included)."""
    if rows:
        store.write_batch(rows)
