"""Budgets and rate limits shared by the workers of one `insource serve --workers N` without Redis.

The workers of one host share a small SQLite file (created fresh by the serving process, never the store):
each check-and-book is one `BEGIN IMMEDIATE` transaction, so it is atomic across processes, exactly like
the Redis scripts. Calls run on one thread per worker so the event loop never waits on the file lock.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from insource.errors import BudgetExceeded, ServiceUnavailable
from insource.metering.budgets import Reservation

log = logging.getLogger("insource.limits")
T = TypeVar("T")
HOST_LIMITS_ENV = "INSOURCE_HOST_LIMITS"  # the shared file, set by `insource serve --workers N`

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (scope TEXT PRIMARY KEY, spent REAL NOT NULL DEFAULT 0,
                                   reserved REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS windows (name TEXT PRIMARY KEY, value REAL NOT NULL, expires REAL NOT NULL);
"""


class HostLimits:
    """The `Limits` protocol over a host-local SQLite file shared by every worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insource-limits")
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # limits restart with the server; the store keeps the spend
        self._db.executescript(SCHEMA)
        self._pending: set[asyncio.Future[None]] = set()

    @staticmethod
    def _month() -> str:
        return time.strftime("%Y-%m", time.gmtime())

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as exc:
            log.error("host limits file unavailable: %s", exc)
            raise ServiceUnavailable("The shared limits file is unavailable; try again shortly.") from None

    # -- rate limits: fixed one-minute windows, as with Redis ----------------------------------
    def _rate_sync(self, key_id: str, rpm: int | None, tpm: int | None, est: int) -> bool:
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

    async def check_rate(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int) -> float | None:
        if rpm is None and tpm is None:
            return None
        admitted = await self._run(self._rate_sync, key_id, rpm, tpm, est_tokens)
        return None if admitted else max(1.0, 60.0 - time.time() % 60)

    # -- budgets ---------------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _reserve_sync(self, limits: list[tuple[str, float]], amount: float) -> tuple[str, float] | None:
        """None when booked; else the (scope, limit) that would overshoot (nothing booked)."""
        month = self._month()
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

    async def reserve(self, limits: list[tuple[str, float]], amount: float) -> Reservation:
        refused = await self._run(self._reserve_sync, limits, amount)
        if refused is not None:
            raise BudgetExceeded.of(*refused)
        return Reservation(tuple(scope for scope, _ in limits), amount)

    def _settle_sync(self, scopes: tuple[str, ...], amount: float, actual: float) -> None:
        month = self._month()
        with self._tx() as db:
            for scope in scopes:
                db.execute(
                    "INSERT INTO ledger (scope, spent) VALUES (?, ?) ON CONFLICT(scope) DO UPDATE SET"
                    " reserved = max(0, reserved - ?), spent = spent + excluded.spent",
                    (f"{month}:{scope}", actual, amount),
                )

    def settle(self, reservation: Reservation, actual: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._settle_sync, reservation.scopes, reservation.amount, actual
        )
        self._pending.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:  # the usage record still has the spend
            log.error("host limits settle failed: %s", future.exception())

    def correct_tokens(self, key_id: str, delta: float) -> None:
        return None  # fixed one-minute windows: the estimate stands

    def _seed_sync(self, spent: dict[str, float]) -> None:
        month = self._month()
        with self._tx() as db:  # the first worker seeds from the store; the others find it done
            for scope, value in spent.items():
                db.execute("INSERT OR IGNORE INTO ledger (scope, spent) VALUES (?, ?)", (f"{month}:{scope}", value))

    async def seed(self, spent: dict[str, float]) -> None:
        await self._run(self._seed_sync, spent)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._pool.shutdown(wait=True)
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
