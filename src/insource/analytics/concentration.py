"""Revenue concentration: shares, top-1/top-5 share, the Herfindahl–Hirschman index and what-ifs.

HHI = Σ (100 × share)² over tenants, 0..10,000. Reading per the 2023 DOJ/FTC Merger Guidelines: above 1,800
`high` (highly concentrated), 1,000–1,800 `moderate`, below 1,000 `unconcentrated`. A tenant at 10% or more of
revenue is a `major_customer` (the usual major-customer disclosure threshold).
"""

from __future__ import annotations

from typing import Any

from insource.errors import NotReady

HIGH_HHI = 1800.0
MODERATE_HHI = 1000.0
MAJOR_SHARE = 0.10
MIN_PCT, MAX_PCT = -100.0, 1000.0


def shares(revenue: dict[str, float]) -> dict[str, float]:
    total = sum(revenue.values())
    return {t: (v / total if total > 0 else 0.0) for t, v in revenue.items()}


def hhi(share_of: dict[str, float]) -> float:
    return sum((100.0 * s) ** 2 for s in share_of.values())


def reading(index: float) -> str:
    if index > HIGH_HHI:
        return "high"
    if index >= MODERATE_HHI:
        return "moderate"
    return "unconcentrated"


def top_share(share_of: dict[str, float], n: int) -> float:
    return sum(sorted(share_of.values(), reverse=True)[:n])


def parse_what_if(text: str, tenants: set[str]) -> tuple[str, float]:
    """`TENANT=PCT` (PCT in −100..+1000, the percent change of that tenant's spend)."""
    tenant, sep, pct_text = text.rpartition("=")
    if not sep or not tenant:
        raise NotReady(f"--what-if {text!r}: expected TENANT=PCT, e.g. acme=-30")
    try:
        pct = float(pct_text.strip().rstrip("%"))
    except ValueError:
        raise NotReady(f"--what-if {text!r}: {pct_text!r} is not a number") from None
    if not MIN_PCT <= pct <= MAX_PCT:
        raise NotReady(f"--what-if {text!r}: the change must be between -100 and +1000 percent")
    if tenant not in tenants:
        raise NotReady(f"--what-if {text!r}: unknown tenant {tenant!r} (no revenue this month)")
    return tenant, pct


def what_if(revenue: dict[str, float], tenant: str, pct: float) -> dict[str, Any]:
    """That tenant changes its spend by `pct`%: the total after and the total's change as a share of before."""
    total = sum(revenue.values())
    after = total + revenue[tenant] * pct / 100.0
    return {
        "tenant": tenant,
        "change": pct / 100.0,
        "total_usd": round(after, 6),
        "total_change_share": round((after - total) / total, 6) if total > 0 else 0.0,
    }
