"""Named, ordered, append-only migrations. Never edit one that has shipped: append a new one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class DB(Protocol):
    """What a migration may use: a sqlite3 connection, or the PostgreSQL store's translating wrapper."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


Migration = Callable[[DB], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def run_script(db: DB, script: str) -> None:
    """Run statements one by one inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@migration
def m001_initial(db: DB) -> None:
    run_script(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE keys (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
            created_at REAL NOT NULL, revoked_at REAL, budget_usd REAL, rpm INTEGER, tpm INTEGER,
            models TEXT, capture INTEGER
        );
        CREATE INDEX keys_tenant ON keys(tenant);
        CREATE TABLE usage (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
            endpoint TEXT NOT NULL, model TEXT, served_by TEXT, task TEXT, stream INTEGER NOT NULL DEFAULT 0,
            status INTEGER NOT NULL, error_code TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0, reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0, cost_avoided_usd REAL NOT NULL DEFAULT 0,
            latency_ms REAL, ttft_ms REAL, attempts INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX usage_ts ON usage(ts);
        CREATE INDEX usage_tenant_ts ON usage(tenant, ts);
        CREATE INDEX usage_key_ts ON usage(key_id, ts);
        CREATE INDEX usage_task_ts ON usage(task, ts);
        """,
    )


@migration
def m002_capture(db: DB) -> None:
    run_script(
        db,
        """
        CREATE TABLE blobs (hash TEXT PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE captures (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
            task TEXT, model TEXT, provider TEXT, upstream_model TEXT, upstream_version TEXT,
            served_by TEXT, terms TEXT NOT NULL, consent INTEGER NOT NULL,
            messages TEXT NOT NULL, params TEXT NOT NULL, output_hash TEXT, output TEXT,
            finish_reason TEXT, status INTEGER NOT NULL, redactors TEXT NOT NULL, redactions TEXT NOT NULL
        );
        CREATE INDEX captures_task_ts ON captures(task, ts);
        CREATE TABLE audit (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, action TEXT NOT NULL, task TEXT, purpose TEXT,
            target TEXT, detail TEXT NOT NULL
        );
        """,
    )


@migration
def m003_routing(db: DB) -> None:
    run_script(
        db,
        """
        CREATE TABLE routes (
            task TEXT PRIMARY KEY, model TEXT NOT NULL, mode TEXT NOT NULL, percent REAL NOT NULL,
            threshold REAL, target_agreement REAL, audit_rate REAL NOT NULL, floor REAL NOT NULL,
            active INTEGER NOT NULL DEFAULT 1, updated_at REAL NOT NULL
        );
        CREATE TABLE route_events (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, task TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
        );
        CREATE TABLE agreements (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL,
            source TEXT NOT NULL, agree INTEGER NOT NULL
        );
        CREATE INDEX agreements_task_ts ON agreements(task, ts);
        """,
    )


@migration
def m004_logs_request_id(db: DB) -> None:
    """The request id the caller sent (X-Request-Id) or the gateway made: the same in the response and logs."""
    run_script(
        db,
        """
        ALTER TABLE usage ADD COLUMN request_id TEXT;
        CREATE INDEX usage_request_id ON usage(request_id);
        """,
    )


_USAGE_ROLLUPS = """
    CREATE TABLE IF NOT EXISTS usage_daily (
        day TEXT NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
        task TEXT NOT NULL, served_by TEXT NOT NULL, endpoint TEXT NOT NULL, imported INTEGER NOT NULL,
        requests BIGINT NOT NULL, refused BIGINT NOT NULL, audits BIGINT NOT NULL, errors BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL, cost_usd REAL NOT NULL, cost_avoided_usd REAL NOT NULL,
        PRIMARY KEY (day, tenant, key_id, model, task, served_by, endpoint, imported)
    );
    CREATE INDEX IF NOT EXISTS usage_daily_key_day ON usage_daily(key_id, day);
    CREATE TABLE IF NOT EXISTS usage_daily_lite (
        day TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL, task TEXT NOT NULL,
        served_by TEXT NOT NULL, endpoint TEXT NOT NULL, imported INTEGER NOT NULL,
        requests BIGINT NOT NULL, refused BIGINT NOT NULL, audits BIGINT NOT NULL, errors BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL, cost_usd REAL NOT NULL, cost_avoided_usd REAL NOT NULL,
        PRIMARY KEY (day, tenant, model, task, served_by, endpoint, imported)
    );
    CREATE TABLE IF NOT EXISTS usage_imports (
        id TEXT PRIMARY KEY, day TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL, task TEXT,
        requests BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        cost_usd REAL NOT NULL, priced INTEGER NOT NULL, source TEXT NOT NULL, line INTEGER NOT NULL,
        imported_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_imports_day ON usage_imports(day);
    CREATE TABLE IF NOT EXISTS usage_daily_zone (zone TEXT NOT NULL);
    INSERT INTO usage_daily_zone (zone) SELECT 'UTC' WHERE NOT EXISTS (SELECT 1 FROM usage_daily_zone);
    INSERT INTO usage_daily (
        day, tenant, key_id, model, task, served_by, endpoint, imported, requests, refused, audits, errors,
        prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd, cost_avoided_usd
    )
    SELECT strftime('%Y-%m-%d', ts, 'unixepoch'), tenant, key_id, COALESCE(model, ''), COALESCE(task, ''),
        COALESCE(served_by, ''), endpoint, 0,
        SUM(CASE WHEN endpoint = 'audit' THEN 0 ELSE 1 END),
        SUM(CASE WHEN endpoint <> 'audit' AND served_by IS NULL AND attempts = 0 THEN 1 ELSE 0 END),
        SUM(CASE WHEN endpoint = 'audit' THEN 1 ELSE 0 END),
        SUM(CASE WHEN endpoint <> 'audit' AND status >= 400 THEN 1 ELSE 0 END),
        SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens), SUM(reasoning_tokens),
        SUM(cost_usd), SUM(cost_avoided_usd)
    FROM usage WHERE NOT EXISTS (SELECT 1 FROM usage_daily)
    GROUP BY strftime('%Y-%m-%d', ts, 'unixepoch'), tenant, key_id, COALESCE(model, ''), COALESCE(task, ''),
        COALESCE(served_by, ''), endpoint;
    INSERT INTO usage_daily_lite
    SELECT day, tenant, model, task, served_by, endpoint, imported, SUM(requests), SUM(refused), SUM(audits),
        SUM(errors), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens), SUM(reasoning_tokens),
        SUM(cost_usd), SUM(cost_avoided_usd)
    FROM usage_daily WHERE NOT EXISTS (SELECT 1 FROM usage_daily_lite)
    GROUP BY day, tenant, model, task, served_by, endpoint, imported
"""


@migration
def m005_usage_rollups(db: DB) -> None:
    """Daily usage rollups (reports read days, not requests) and imported bill history.

    `usage_daily` holds one row per local day (in `[report] timezone`, recorded in `usage_daily_zone`) ×
    tenant × key × model × task × served_by × endpoint × imported. NULLs are stored as '' (key columns cannot
    be NULL); `usage_daily_lite` is the same without the key (what most reports read: far fewer rows).
    Backfilled here in UTC; a store opened with another timezone is rebuilt (`store/rollups.py`). Safe to run
    again on a store that has the tables (if renumbered when branches merge): nothing is created or added twice.
    """
    run_script(db, _USAGE_ROLLUPS)


@migration
def m006_opportunities(db: DB) -> None:
    """Mined prompt templates (`insource opportunities`) and templates assigned to a task (`tasks assign`).
    IF NOT EXISTS: safe to run again should this migration be renumbered on a merge."""
    run_script(
        db,
        """
        CREATE INDEX IF NOT EXISTS captures_ts_id ON captures(ts, id);
        CREATE TABLE IF NOT EXISTS templates (
            id TEXT PRIMARY KEY, text TEXT NOT NULL, template TEXT NOT NULL, kind TEXT NOT NULL,
            requests INTEGER NOT NULL, mined_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS template_tasks (
            template_id TEXT PRIMARY KEY, task TEXT NOT NULL, template TEXT NOT NULL, assigned_at REAL NOT NULL
        );
        """,
    )


@migration
def m007_usage_rollup_keys(db: DB) -> None:
    """`usage_daily_keys`: the daily rollups per key only (day × tenant × key × imported), for budgets and per-key
    reports, which otherwise read the full table. Built from `usage_daily`; safe to run again."""
    run_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS usage_daily_keys (
            day TEXT NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL, imported INTEGER NOT NULL,
            requests BIGINT NOT NULL, refused BIGINT NOT NULL, audits BIGINT NOT NULL, errors BIGINT NOT NULL,
            prompt_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL, cost_usd REAL NOT NULL, cost_avoided_usd REAL NOT NULL,
            PRIMARY KEY (day, tenant, key_id, imported)
        );
        CREATE INDEX IF NOT EXISTS usage_daily_keys_key ON usage_daily_keys(key_id, day);
        INSERT INTO usage_daily_keys
        SELECT day, tenant, key_id, imported, SUM(requests), SUM(refused), SUM(audits), SUM(errors),
            SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens), SUM(reasoning_tokens), SUM(cost_usd),
            SUM(cost_avoided_usd)
        FROM usage_daily WHERE NOT EXISTS (SELECT 1 FROM usage_daily_keys)
        GROUP BY day, tenant, key_id, imported
        """,
    )


@migration
def m008_feedback(db: DB) -> None:
    """Feedback on answered requests (`POST /v1/feedback`): a score, a label, a corrected answer, a comment.

    `request_id` is what the caller saw (X-Request-Id); `usage_id` the usage record (and capture) it names, so
    datasets can join feedback to captures. Safe to run again (if renumbered when branches merge)."""
    run_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS feedback (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
            request_id TEXT NOT NULL, usage_id TEXT NOT NULL, task TEXT, score REAL, label TEXT,
            correction TEXT, comment TEXT, redactions TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS feedback_usage ON feedback(usage_id);
        CREATE INDEX IF NOT EXISTS feedback_task_ts ON feedback(task, ts)
        """,
    )


@migration
def m009_batches(db: DB) -> None:
    """The Batch API (`/v1/files`, `/v1/batches`): which tenant owns each upstream file and batch (the ids are the
    upstream's), the model alias a batch file's lines name, and when a batch was metered (once). Safe to run
    again (if renumbered when branches merge)."""
    run_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS batch_files (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT NOT NULL, provider TEXT NOT NULL,
            purpose TEXT NOT NULL, model TEXT, upstream_model TEXT, endpoint TEXT, lines INTEGER, tasks TEXT,
            object TEXT NOT NULL, created_at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS batch_files_tenant ON batch_files(tenant, created_at);
        CREATE TABLE IF NOT EXISTS batches (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT NOT NULL, provider TEXT NOT NULL,
            model TEXT NOT NULL, upstream_model TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
            task TEXT, status TEXT NOT NULL, object TEXT NOT NULL, created_at REAL NOT NULL, metered_at REAL,
            records INTEGER, polled_at REAL
        );
        CREATE INDEX IF NOT EXISTS batches_tenant ON batches(tenant, created_at)
        """,
    )


@migration
def m010_i14a_cascade_promise(db: DB) -> None:
    """A cascade's promise kept on live traffic: how many live requests a route calibrates on (`route_promises`,
    per stored route), its threshold history (`route_thresholds`: chosen on live traffic, raised on audits), and
    the student's confidence with each calibration sample and audit (`route_samples`). Safe to run again."""
    run_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS route_promises (
            task TEXT PRIMARY KEY, since REAL NOT NULL, calibrate INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS route_thresholds (
            task TEXT NOT NULL, model TEXT NOT NULL, since REAL NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
            threshold REAL, reason TEXT NOT NULL, detail TEXT NOT NULL,
            PRIMARY KEY (task, model, since, seq)
        );
        CREATE TABLE IF NOT EXISTS route_samples (
            id TEXT PRIMARY KEY, ts REAL NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL, since REAL NOT NULL,
            source TEXT NOT NULL, confidence REAL NOT NULL, agree INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS route_samples_policy ON route_samples(task, model, since, source, ts)
        """,
    )


@migration
def m011_i14c_catch_all_samples(db: DB) -> None:
    """A calibration sample of a classifier with a catch-all label keeps the head's probability of it and whether
    the student and the teacher answered it: the cascade learns the catch-all's live share from them
    (`service/promise.py`)."""
    run_script(
        db,
        """
        ALTER TABLE route_samples ADD COLUMN catch_all REAL;
        ALTER TABLE route_samples ADD COLUMN student_catch_all INTEGER;
        ALTER TABLE route_samples ADD COLUMN teacher_catch_all INTEGER
        """,
    )
