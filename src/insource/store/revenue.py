"""Figures of the provider view (`insource revenue`) per tenant, read from the daily rollups (`usage_queries`).

Revenue is what tenants were billed: the `cost_usd` of their usage (teacher audits and imported bills included).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from insource.store import usage_queries as uq


def tenant_figures(store: uq.QueryStore, first: dt.date, last: dt.date) -> dict[str, dict[str, Any]]:
    """tenant -> {revenue_usd, requests, keys, prompt_tokens, completion_tokens} over local days first..last."""
    flt = uq.UsageFilter(since=first, until=last)
    out: dict[str, dict[str, Any]] = {}
    for r in uq.usage_by(store, ["tenant"], flt):
        out[str(r.keys["tenant"])] = {
            "revenue_usd": r.cost_usd,
            "requests": r.requests + r.audits,
            "keys": 0,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
        }
    for r in uq.usage_by(store, ["tenant", "key"], flt):
        tenant = str(r.keys["tenant"])
        if r.keys["key"] is not None and tenant in out:
            out[tenant]["keys"] += 1
    return out
