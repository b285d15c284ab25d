"""Spend reports from usage records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from insource.errors import BadRequest
from insource.store import AUDITS_SQL, CALLER_REQUESTS_SQL, REFUSED_SQL, SERVED_BY_SQL, Store

GROUPS = {
    "tenant": "tenant",
    "model": "model",
    "task": "task",
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "key": "key_id",
    "served_by": SERVED_BY_SQL,
}


def parse_since(since: str | None) -> float:
    if not since:
        return 0.0
    try:
        dt = datetime.fromisoformat(since)
    except ValueError:
        raise BadRequest(f"--since must be a date like 2026-11-01, got {since!r}", param="since") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def spend(store: Store, by: str = "tenant", since: str | None = None) -> list[dict[str, Any]]:
    if by not in GROUPS:
        raise BadRequest(f"--by must be one of {', '.join(GROUPS)}, got {by!r}", param="by")
    expr = GROUPS[by]
    rows = store.query(
        f"SELECT {expr} AS grp, {CALLER_REQUESTS_SQL} AS requests, {AUDITS_SQL} AS audits,"
        f" {REFUSED_SQL} AS refused,"
        " SUM(prompt_tokens) AS prompt_tokens,"
        " SUM(cached_tokens) AS cached_tokens, SUM(completion_tokens) AS completion_tokens,"
        " SUM(reasoning_tokens) AS reasoning_tokens, SUM(cost_usd) AS cost_usd,"
        " SUM(cost_avoided_usd) AS cost_avoided_usd FROM usage WHERE ts >= ?"
        " GROUP BY grp ORDER BY cost_usd DESC, grp",
        (parse_since(since),),
    )
    out = []
    for row in rows:
        out.append(
            {
                by: row["grp"],
                "requests": int(row["requests"] or 0),
                "audits": int(row["audits"] or 0),
                "refused": int(row["refused"] or 0),
                "prompt_tokens": int(row["prompt_tokens"] or 0),
                "cached_tokens": int(row["cached_tokens"] or 0),
                "completion_tokens": int(row["completion_tokens"] or 0),
                "reasoning_tokens": int(row["reasoning_tokens"] or 0),
                "cost_usd": float(row["cost_usd"] or 0.0),
                "cost_avoided_usd": float(row["cost_avoided_usd"] or 0.0),
            }
        )
    return out


def month_start(now: float) -> float:
    dt = datetime.fromtimestamp(now, UTC)
    return datetime(dt.year, dt.month, 1, tzinfo=UTC).timestamp()


def keys_month_to_date(store: Store, now: float) -> dict[str, float]:
    """Month-to-date spend per key id (the period a key's monthly budget covers)."""
    sql = "SELECT key_id, SUM(cost_usd) AS c FROM usage WHERE ts >= ? GROUP BY key_id"
    rows = store.query(sql, (month_start(now),))
    return {str(row["key_id"]): float(row["c"] or 0.0) for row in rows}


def month_to_date(store: Store, now: float) -> dict[str, float]:
    """Month-to-date spend per budget scope ("key:ID", "tenant:NAME")."""
    start = month_start(now)
    out: dict[str, float] = {f"key:{key}": spent for key, spent in keys_month_to_date(store, now).items()}
    for row in store.query("SELECT tenant, SUM(cost_usd) AS c FROM usage WHERE ts >= ? GROUP BY tenant", (start,)):
        out[f"tenant:{row['tenant']}"] = float(row["c"] or 0.0)
    return out
