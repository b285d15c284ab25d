"""Spend reports from usage records."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from insource.errors import BadRequest
from insource.store import Store
from insource.store.usage_queries import UsageFilter, month_to_date_from_records, usage_by

BY = ("tenant", "key", "model", "provider", "task", "served_by", "day", "week", "month")
MAX_BY = 2
# The keys of every spend row after its dimension(s), in order (JSON, CSV and table alike).
MEASURES = (
    "requests",
    "refused",
    "audits",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_avoided_usd",
)


def parse_by(by: str) -> list[str]:
    """ "task,day" → ["task", "day"]: one or two of `BY`, no repeats."""
    dims = [d.strip() for d in by.split(",")]
    bad = next((d for d in dims if d not in BY), None)
    if bad is not None or not dims:
        raise BadRequest(f"--by must be one or two of {', '.join(BY)} (e.g. task,day), got {by!r}", param="by")
    if len(dims) > MAX_BY or len(set(dims)) != len(dims):
        raise BadRequest(f"--by takes at most {MAX_BY} different dimensions, got {by!r}", param="by")
    return dims


def parse_day(value: str | None, zone: str = "UTC", param: str = "since") -> dt.date | None:
    """A date (YYYY-MM-DD), or an ISO date-time (its day in `zone`), or Nd (N days before today in `zone`)."""
    if not value:
        return None
    tz = ZoneInfo(zone)
    text = value.strip()
    if text[:-1].isdigit() and text.endswith("d") and len(text) <= 6:
        return dt.datetime.now(tz).date() - dt.timedelta(days=int(text[:-1]))
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"--{param} must be a date like 2026-11-01 (or an ISO date-time, or 30d), got {value!r}", param=param
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(tz).date()


def parse_since(since: str | None) -> None:
    """Refuse a malformed --since/--until before any store or gateway is asked."""
    parse_day(since)


def spend(store: Store, by: str = "tenant", since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Spend rows grouped by one or two of `BY`, between two local days (inclusive), from the daily rollups.

    Each row: the dimension(s), then `MEASURES`. `requests` counts the requests a teacher or a student answered;
    `refused` the ones refused before any answer; `audits` the teacher's audits of student answers.
    """
    dims = parse_by(by)
    zone = store.report_timezone()
    flt = UsageFilter(since=parse_day(since, zone), until=parse_day(until, zone, "until"))
    out = []
    for row in usage_by(store, dims, flt):
        record: dict[str, Any] = dict(row.keys)
        record["requests"] = row.requests - row.refused
        record["refused"] = row.refused
        for name in MEASURES[2:]:
            record[name] = getattr(row, name)
        out.append(record)
    return out


def month_start(now: float) -> float:
    dt = datetime.fromtimestamp(now, UTC)
    return datetime(dt.year, dt.month, 1, tzinfo=UTC).timestamp()


def keys_month_to_date(store: Store, now: float) -> dict[str, float]:
    """Month-to-date spend per key id (the period a key's monthly budget covers)."""
    return {scope[4:]: spent for scope, spent in month_to_date(store, now).items() if scope.startswith("key:")}


def month_to_date(store: Store, now: float) -> dict[str, float]:
    """Month-to-date spend (UTC month) per budget scope ("key:ID", "tenant:NAME"), gateway records only.

    Read from the daily rollups when their days are UTC days (exact then, and far cheaper than the records: every
    worker asks each second); otherwise from the records.
    """
    start = month_start(now)
    if store.report_timezone() != "UTC":
        return month_to_date_from_records(store, start)
    flt = UsageFilter(since=datetime.fromtimestamp(start, UTC).date(), imported=False)
    out = {f"key:{r.keys['key']}": r.cost_usd for r in usage_by(store, ["key"], flt)}
    out.update({f"tenant:{r.keys['tenant']}": r.cost_usd for r in usage_by(store, ["tenant"], flt)})
    return out
