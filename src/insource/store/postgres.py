"""PostgreSQL store (`[store] url = "postgresql://..."`, the `[postgres]` extra): the same interface as the
SQLite store, so every layer above writes the same parameterised SQL.

The few dialect differences are translated in one place (`translate`): `?` placeholders, `INSERT OR
IGNORE`, SQLite's `strftime` day grouping, case-insensitive `LIKE`, and column types in migrations.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from insource.errors import ConfigError
from insource.store import rollups
from insource.store.migrations import MIGRATIONS
from insource.store.sqlite import Row, Store, write_rows

_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)
_DAY = "strftime('%Y-%m-%d', ts, 'unixepoch')"
_PG_DAY = "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_TYPES = [(re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bBLOB\b"), "TEXT")]


def translate(sql: str, ddl: bool = False) -> str:
    """SQLite-flavoured SQL (as the layers above write it) to PostgreSQL."""
    ignore = bool(_INSERT_OR_IGNORE.match(sql))
    if ignore:
        sql = _INSERT_OR_IGNORE.sub("INSERT INTO", sql, count=1) + " ON CONFLICT DO NOTHING"
    sql = sql.replace(_DAY, _PG_DAY).replace(" LIKE ", " ILIKE ")
    if ddl:
        for pattern, replacement in _TYPES:
            sql = pattern.sub(replacement, sql)
    return sql.replace("%", "%%").replace("?", "%s")


class _MigrationDB:
    """What a migration sees: `execute(sql)` inside the migration's transaction, with DDL translated."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(translate(sql, ddl=True).replace("%%", "%"), params or None)


def _text_safe(values: Sequence[Any]) -> list[Any]:
    """PostgreSQL text cannot hold NUL (SQLite can): it becomes U+FFFD instead of failing a whole batch."""
    return [v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v for v in values]


def _numeric(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class _PgOps:
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def many(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        self.cur.executemany(translate(sql), [_text_safe(v) for v in values])

    def one(self, sql: str, values: tuple[Any, ...]) -> int:
        self.cur.execute(translate(sql), _text_safe(values))
        return int(self.cur.rowcount)

    def value(self, sql: str, params: tuple[Any, ...]) -> Any:
        row = self.cur.execute(translate(sql), params).fetchone()
        return None if row is None else next(iter(row.values()))


class PgStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, timezone: str | None = None) -> None:  # a URL, not the SQLite store's path
        self.url = url
        self.path = None  # type: ignore[assignment]
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        self._day_of = rollups.DayOf("UTC")
        self.migrate()
        if timezone is not None:
            self.ensure_timezone(timezone)

    def data_version(self) -> int | None:
        return None  # PostgreSQL has no cheap equivalent: workers re-read their keys and routes every time

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn().transaction():
            yield

    def ensure_timezone(self, zone: str) -> None:
        if self.report_timezone() == zone:
            return
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(7474002)")  # one rebuild at a time, across processes
            if self.report_timezone() != zone:
                rollups.rebuild(self, zone)

    def conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                import psycopg
                from psycopg.rows import dict_row
            except ImportError:
                raise ConfigError(
                    'a postgresql:// store needs the [postgres] extra: pip install "insource[postgres]"'
                ) from None
            try:
                conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
            except psycopg.Error as exc:
                raise ConfigError(f"cannot open the store: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
            self._local.conn = conn
        return conn

    def migrate(self) -> list[str]:
        applied: list[str] = []
        db = self.conn()
        with self._migrate_lock, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(7474001)")  # one migrator at a time, across processes
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)")
            done = {r["name"] for r in db.execute("SELECT name FROM _migrations").fetchall()}
            for name, fn in MIGRATIONS:
                if name in done:
                    continue
                fn(_MigrationDB(db))
                db.execute("INSERT INTO _migrations VALUES (%s, %s)", (name, time.time()))
                applied.append(name)
        return applied

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows = self.conn().execute(translate(sql), _text_safe(params) or None).fetchall()
        return [{k: _numeric(v) for k, v in row.items()} for row in rows]

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self.conn().execute(translate(sql), _text_safe(params) or None).fetchone()
        return None if row is None else {k: _numeric(v) for k, v in row.items()}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn().execute(translate(sql), _text_safe(params) or None).rowcount)

    def write_batch(self, batch: Sequence[tuple[str, Row, bool]]) -> None:
        db = self.conn()
        with db.transaction(), db.cursor() as cur:
            self._day_of = write_rows(_PgOps(cur), batch, self._day_of)
