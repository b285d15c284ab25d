"""Queries over virtual keys (`keys`): the store writes what the key service hands it, nothing more.

Written with `?` placeholders; `PgStore` translates them, so the same functions serve SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from insource.store.sqlite import Row, Store

_CACHE_COLUMNS = "id, tenant, hash, budget_usd, rpm, tpm, models, capture, revoked_at"


def insert_key(store: Store, row: dict[str, Any]) -> None:
    """One new key row: id, tenant, hash, prefix, created_at, budget_usd, rpm, tpm, models (JSON), capture."""
    store.execute(
        "INSERT INTO keys (id, tenant, hash, prefix, created_at, budget_usd, rpm, tpm, models, capture)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row["id"],
            row["tenant"],
            row["hash"],
            row["prefix"],
            row["created_at"],
            row["budget_usd"],
            row["rpm"],
            row["tpm"],
            row["models"],
            row["capture"],
        ),
    )


def key_listing(store: Store) -> list[Row]:
    """Every key's metadata for operators, oldest first: never the key, never its hash."""
    return store.query(
        "SELECT id, tenant, prefix, created_at, revoked_at, budget_usd, rpm, tpm, models FROM keys ORDER BY created_at"
    )


def revoke(store: Store, key_id: str, ts: float) -> bool:
    """Revoke an active key; True when the key exists (revoked now or before)."""
    changed = store.execute("UPDATE keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (ts, key_id))
    return changed > 0 or store.query_one("SELECT 1 FROM keys WHERE id=?", (key_id,)) is not None


def keys_for_cache(store: Store) -> list[Row]:
    """Every key with what authentication needs (hash, limits, models, capture, revoked_at)."""
    return store.query(f"SELECT {_CACHE_COLUMNS} FROM keys")


def key_by_hash(store: Store, digest: str) -> Row | None:
    return store.query_one(f"SELECT {_CACHE_COLUMNS} FROM keys WHERE hash=?", (digest,))
