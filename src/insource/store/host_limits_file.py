"""The SQL of the host-limits file: budgets and rate limits shared by the workers of one
`insource serve --workers N` without Redis (`service/limits/host.py` runs these off the event loop).

A small SQLite file created fresh by the serving process (never the store): each check-and-book is one
`BEGIN IMMEDIATE` transaction, so it is atomic across processes, exactly like the Redis scripts. SQLite only:
a PostgreSQL deployment shares limits through Redis.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (scope TEXT PRIMARY KEY, spent REAL NOT NULL DEFAULT 0,
                                   reserved REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS windows (name TEXT PRIMARY KEY, value REAL NOT NULL, expires REAL NOT NULL);
"""
Error = sqlite3.Error


def _month() -> str:
    return time.strftime("%Y-%m", time.gmtime())


class HostLimitsFile:
    """Synchronous check-and-book over the shared file (call from one thread)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # limits restart with the server; the store keeps the spend
        self._db.executescript(SCHEMA)

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def book_rate(self, key_id: str, rpm: int | None, tpm: int | None, est: int) -> bool:
        """Count one request (and `est` tokens) in this minute's windows; False (nothing booked) when over."""
        minute = int(time.time() // 60)
        now = time.time()
        names = (f"rpm:{key_id}:{minute}", f"tpm:{key_id}:{minute}")
        with self._tx() as db:
            db.execute("DELETE FROM windows WHERE expires < ?", (now,))
            used = dict(db.execute("SELECT name, value FROM windows WHERE name IN (?, ?)", names).fetchall())
            if rpm is not None and used.get(names[0], 0) + 1 > rpm:
                return False
            if tpm is not None and used.get(names[1], 0) + est > tpm:
                return False
            for name, amount in ((names[0], 1), (names[1], est if tpm is not None else 0)):
                db.execute(
                    "INSERT INTO windows VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                    (name, amount, now + 120, amount),
                )
        return True

    def reserve(self, limits: list[tuple[str, float]], amount: float) -> tuple[str, float] | None:
        """None when booked; else the (scope, limit) that would overshoot (nothing booked)."""
        month = _month()
        with self._tx() as db:
            for scope, limit in limits:
                row = db.execute("SELECT spent + reserved FROM ledger WHERE scope = ?", (f"{month}:{scope}",))
                used = (row.fetchone() or (0.0,))[0]
                if used + amount > limit + 1e-12:
                    return scope, limit
            for scope, _ in limits:
                db.execute(
                    "INSERT INTO ledger (scope, reserved) VALUES (?, ?)"
                    " ON CONFLICT(scope) DO UPDATE SET reserved = reserved + excluded.reserved",
                    (f"{month}:{scope}", amount),
                )
        return None

    def settle(self, scopes: tuple[str, ...], amount: float, actual: float) -> None:
        month = _month()
        with self._tx() as db:
            for scope in scopes:
                db.execute(
                    "INSERT INTO ledger (scope, spent) VALUES (?, ?) ON CONFLICT(scope) DO UPDATE SET"
                    " reserved = max(0, reserved - ?), spent = spent + excluded.spent",
                    (f"{month}:{scope}", actual, amount),
                )

    def seed(self, spent: dict[str, float]) -> None:
        """Month-to-date spend from the store: the first worker seeds it, the others find it done."""
        month = _month()
        with self._tx() as db:
            for scope, value in spent.items():
                db.execute("INSERT OR IGNORE INTO ledger (scope, spent) VALUES (?, ?)", (f"{month}:{scope}", value))

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """`BEGIN IMMEDIATE` … `COMMIT` (or `ROLLBACK` on error): one writer at a time across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
