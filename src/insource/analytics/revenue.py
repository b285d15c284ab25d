"""The provider's view (`insource revenue`): revenue per tenant, concentration, what-ifs, extraction risk.

Revenue is what tenants were billed (the `cost_usd` of their usage records). Months are calendar months in UTC;
without `--month`, the latest month with usage.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def _start(year: int, month: int) -> float:
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def month_bounds(month: str | None, latest: float | None) -> tuple[str, float, float, float]:
    """(YYYY-MM, start, end, previous month's start) in UTC."""
    if month is None:
        when = datetime.fromtimestamp(latest if latest is not None else time.time(), UTC)
        year, mon = when.year, when.month
    else:
        match = _MONTH.match(month.strip())
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise NotReady(f"--month {month!r}: expected YYYY-MM, e.g. 2026-11")
        year, mon = int(match.group(1)), int(match.group(2))
    nxt = (year + 1, 1) if mon == 12 else (year, mon + 1)
    prev = (year - 1, 12) if mon == 1 else (year, mon - 1)
    return f"{year:04d}-{mon:02d}", _start(year, mon), _start(*nxt), _start(*prev)


def _traffic(store: Store, since: float, until: float, constant: set[str]) -> dict[str, TenantTraffic]:
    pages = iter_capture_pages(store, since=since, until=until)
    return traffic_by_tenant(iter_prompts(store, pages), constant, message_hashes)


def _risks(
    store: Store, cur: dict[str, Any], prev: dict[str, Any], bounds: tuple[float, float, float]
) -> dict[str, Any]:
    start, end, prev_start = bounds
    count, _, _ = capture_span(store)
    constant = repeating_blobs(store, max(MIN_CONSTANT_USES, count // 10_000)) if count else set()
    now, before = _traffic(store, start, end, constant), _traffic(store, prev_start, start, constant)
    values = {t: features(cur[t], prev.get(t), now.get(t), len(before[t].skeletons) if t in before else 0) for t in cur}
    return {t: risk(values, t) for t in cur}


def revenue_report(store: Store, month: str | None = None, what_ifs: Sequence[str] = ()) -> dict[str, Any]:
    """The exact `insource revenue --json` object."""
    latest = store.query_one("SELECT MAX(ts) AS ts FROM usage")
    label, start, end, prev_start = month_bounds(month, None if latest is None else latest["ts"])
    cur, prev = tenant_figures(store, start, end), tenant_figures(store, prev_start, start)
    revenue = {t: float(r["revenue_usd"]) for t, r in cur.items()}
    scenarios = [parse_what_if(w, set(revenue)) for w in what_ifs]
    share_of = shares(revenue)
    risks = _risks(store, cur, prev, (start, end, prev_start)) if cur else {}
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
        "month": label,
        "total_usd": round(sum(revenue.values()), 6),
        "tenants": tenants,
        "top1_share": round(top_share(share_of, 1), 6),
        "top5_share": round(top_share(share_of, 5), 6),
        "hhi": round(index, 2),
        "concentration": reading(index),
        "what_if": [what_if(revenue, t, pct) for t, pct in scenarios],
    }
