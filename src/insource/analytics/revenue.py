"""The provider's view (`insource revenue`): revenue per tenant, concentration, what-ifs, extraction risk.

Revenue is what tenants were billed (the `cost_usd` of their usage, read from the daily rollups). Months are
calendar months in the reporting timezone (`[report] timezone`); without `--month`, the latest month with usage.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from insource.analytics.concentration import (
    MAJOR_SHARE,
    hhi,
    parse_what_if,
    reading,
    shares,
    top_share,
    what_if,
)
from insource.analytics.extraction import TenantTraffic, features, risk, traffic_by_tenant
from insource.analytics.templates import MIN_CONSTANT_USES, iter_prompts, message_hashes
from insource.errors import NotReady
from insource.store import Store
from insource.store.opportunities import capture_span, iter_capture_pages, repeating_blobs
from insource.store.revenue import tenant_figures
from insource.store.usage_queries import day_span

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class Month:
    label: str  # YYYY-MM
    first: dt.date
    last: dt.date
    prev_first: dt.date
    prev_last: dt.date
    start: float  # Unix times of the local month's bounds (captures are read by timestamp)
    end: float
    prev_start: float


def _first(year: int, month: int) -> dt.date:
    return dt.date(year, month, 1)


def month_bounds(month: str | None, latest: dt.date | None, zone: str = "UTC") -> Month:
    """The calendar month in the reporting timezone (`month` "YYYY-MM", else the month of `latest`, else now)."""
    if month is None:
        when = latest or dt.datetime.now(ZoneInfo(zone)).date()
        year, mon = when.year, when.month
    else:
        match = _MONTH.match(month.strip())
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise NotReady(f"--month {month!r}: expected YYYY-MM, e.g. 2026-11")
        year, mon = int(match.group(1)), int(match.group(2))
    first = _first(year, mon)
    nxt = _first(year + 1, 1) if mon == 12 else _first(year, mon + 1)
    prev = _first(year - 1, 12) if mon == 1 else _first(year, mon - 1)
    tz = ZoneInfo(zone)

    def ts(day: dt.date) -> float:
        return dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()

    one = dt.timedelta(days=1)
    return Month(f"{year:04d}-{mon:02d}", first, nxt - one, prev, first - one, ts(first), ts(nxt), ts(prev))


def _traffic(store: Store, since: float, until: float, constant: set[str]) -> dict[str, TenantTraffic]:
    pages = iter_capture_pages(store, since=since, until=until)
    return traffic_by_tenant(iter_prompts(store, pages), constant, message_hashes)


def _risks(store: Store, cur: dict[str, Any], prev: dict[str, Any], m: Month) -> dict[str, Any]:
    start, end, prev_start = m.start, m.end, m.prev_start
    count, _, _ = capture_span(store)
    constant = repeating_blobs(store, max(MIN_CONSTANT_USES, count // 10_000)) if count else set()
    now, before = _traffic(store, start, end, constant), _traffic(store, prev_start, start, constant)
    values = {t: features(cur[t], prev.get(t), now.get(t), len(before[t].skeletons) if t in before else 0) for t in cur}
    return {t: risk(values, t) for t in cur}


def revenue_report(store: Store, month: str | None = None, what_ifs: Sequence[str] = ()) -> dict[str, Any]:
    """The exact `insource revenue --json` object."""
    span = day_span(store)
    m = month_bounds(month, None if span is None else span[1], store.report_timezone())
    cur, prev = tenant_figures(store, m.first, m.last), tenant_figures(store, m.prev_first, m.prev_last)
    revenue = {t: float(r["revenue_usd"]) for t, r in cur.items()}
    scenarios = [parse_what_if(w, set(revenue)) for w in what_ifs]
    share_of = shares(revenue)
    risks = _risks(store, cur, prev, m) if cur else {}
    tenants = []
    for t in sorted(revenue, key=lambda name: (-revenue[name], name)):
        before = float(prev[t]["revenue_usd"]) if t in prev else 0.0
        tenants.append(
            {
                "tenant": t,
                "revenue_usd": round(revenue[t], 6),
                "share": round(share_of[t], 6),
                "mom_growth": round((revenue[t] - before) / before, 6) if before > 0 else None,
                "major_customer": share_of[t] >= MAJOR_SHARE,
                "extraction_risk": risks[t],
            }
        )
    index = hhi(share_of)
    return {
        "month": m.label,
        "total_usd": round(sum(revenue.values()), 6),
        "tenants": tenants,
        "top1_share": round(top_share(share_of, 1), 6),
        "top5_share": round(top_share(share_of, 5), 6),
        "hhi": round(index, 2),
        "concentration": reading(index),
        "what_if": [what_if(revenue, t, pct) for t, pct in scenarios],
    }
