"""SQLite store: opens, migrates, and runs parameterised queries. It writes what it is given."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from insource.errors import ConfigError
from insource.store import rollups
from insource.store.migrations import MIGRATIONS

Row = dict[str, Any]


def group_rows(
    batch: Sequence[tuple[str, Row, bool]],
) -> dict[tuple[str, tuple[str, ...], bool], list[tuple[Any, ...]]]:
    """(table, columns, ignore_duplicates) → the rows' values, in order of first appearance."""
    groups: dict[tuple[str, tuple[str, ...], bool], list[tuple[Any, ...]]] = {}
    for table, row, ignore in batch:
        groups.setdefault((table, tuple(row), ignore), []).append(tuple(row.values()))
    return groups


class BatchOps(Protocol):
    """What `write_rows` needs from a connection inside a transaction (SQL with `?` placeholders)."""

    def many(self, sql: str, values: list[tuple[Any, ...]]) -> None: ...

    def one(self, sql: str, values: tuple[Any, ...]) -> int: ...

    def value(self, sql: str, params: tuple[Any, ...]) -> Any: ...


def write_rows(ops: BatchOps, batch: Sequence[tuple[str, Row, bool]], day_of: rollups.DayOf) -> rollups.DayOf:
    """Insert a mixed batch and add what it inserted to the daily rollups (the caller holds the transaction).

    Rows with the same table, columns and conflict rule go through one `executemany`, in order of first
    appearance (so blobs land before the captures that point at them). Returns the day function in use (the
    rollups' zone is read from meta after the inserts, so a concurrent rebuild is seen).
    """
    rollup = rollups.Rollup()
    for (table, cols, ignore), values in group_rows(batch).items():
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        sql = f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        if ignore and table in rollups.ROLLED_UP:  # only the rows really inserted count
            values = [v for v in values if ops.one(sql, v) > 0]
        else:
            ops.many(sql, values)
        if table in rollups.ROLLED_UP:
            rollup.add(table, cols, values)
    if rollup:
        zone = ops.value(rollups.ZONE_SQL, ()) or "UTC"
        if zone != day_of.zone:
            day_of = rollups.DayOf(zone)
        for sql, values in rollup.upserts(day_of):
            ops.many(sql, values)
    return day_of


class _SqliteOps:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def many(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        self.db.executemany(sql, values)

    def one(self, sql: str, values: tuple[Any, ...]) -> int:
        return self.db.execute(sql, values).rowcount

    def value(self, sql: str, params: tuple[Any, ...]) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]


class Store:
    """A thin, thread-safe wrapper over one SQLite database (one connection per thread)."""

    dialect = "sqlite"
    _version_conn: sqlite3.Connection | None = None  # `data_version`'s own connection (opened on first use)
    _version_lock = threading.Lock()

    def __init__(self, path: Path, timezone: str | None = None) -> None:
        """Open (creating and migrating) the store; with `timezone`, rollups are made to use that zone."""
        self.path = path
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        self._day_of = rollups.DayOf("UTC")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the store folder {path.parent}: {exc.strerror}") from None
        # Opening a new database switches it to WAL and migrates it: SQLite may answer "database is locked" at
        # once (without waiting) when two processes do that together, so openers take turns on a lock file.
        with (path.parent / f"{path.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.migrate()
                if timezone is not None:
                    self.ensure_timezone(timezone)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- connections -------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open the store {self.path}: {exc}") from None
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def data_version(self) -> int | None:
        """A number that changes whenever a commit reaches the store from any other connection: SQLite's `PRAGMA
        data_version` on a connection kept for this alone (~2 µs, no disk access in WAL mode), so a worker reads
        its keys and routes again only when something changed. None when it cannot tell: then callers re-read."""
        with self._version_lock:
            try:
                if self._version_conn is None:
                    self._version_conn = sqlite3.connect(
                        self.path, timeout=1.0, isolation_level=None, check_same_thread=False
                    )
                return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                return None

    # -- schema ------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied."""
        applied: list[str] = []
        with self._migrate_lock:
            db = self.conn()
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
            for name, fn in MIGRATIONS:
                if name in done:
                    continue
                db.execute("BEGIN IMMEDIATE")
                try:
                    if db.execute("SELECT 1 FROM _migrations WHERE name=?", (name,)).fetchone():
                        db.execute("COMMIT")
                        continue
                    fn(db)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                applied.append(name)
        return applied

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the calls made in the block (this thread's connection) in one write transaction."""
        db = self.conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def ensure_timezone(self, zone: str) -> None:
        """Make the daily rollups use `zone` for day boundaries (rebuilding them when they used another)."""
        if self.report_timezone() == zone:
            return
        with self.transaction():
            if self.report_timezone() != zone:
                rollups.rebuild(self, zone)

    def report_timezone(self) -> str:
        """The zone the daily rollups (hence every report) use for day boundaries."""
        row = self.query_one(rollups.ZONE_SQL)
        return str(row["zone"]) if row else "UTC"

    # -- queries -----------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(r) for r in self.conn().execute(sql, params)]

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self.conn().execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn().execute(sql, params).rowcount

    def insert_many(self, table: str, rows: Iterable[Row], *, ignore: bool = False) -> int:
        """Insert rows (dicts with the same keys) in one transaction."""
        rows = list(rows)
        if rows:
            self.write_batch([(table, row, ignore) for row in rows])
        return len(rows)

    def write_batch(self, batch: Sequence[tuple[str, Row, bool]]) -> None:
        """Insert a mixed batch of (table, row, ignore_duplicates) in one transaction, rollups included."""
        db = self.conn()
        db.execute("BEGIN")
        try:
            self._day_of = write_rows(_SqliteOps(db), batch, self._day_of)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- meta --------------------------------------------------------------------------------
    def meta_get(self, key: str) -> str | None:
        row = self.query_one("SELECT value FROM meta WHERE key=?", (key,))
        return None if row is None else str(row["value"])

    def meta_setdefault(self, key: str, value: str) -> str:
        """Set `key` unless present; return the stored value (atomic across processes)."""
        self.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        stored = self.meta_get(key)
        assert stored is not None
        return stored
