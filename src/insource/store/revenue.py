"""Queries of the provider view (`insource revenue`): revenue and usage figures per tenant over a time window.

Revenue is what the tenants were billed: the `cost_usd` of their usage records (teacher audits included).
"""

from __future__ import annotations

from insource.store.sqlite import Row, Store

_PER_TENANT = """
SELECT tenant, COALESCE(SUM(cost_usd), 0) AS revenue_usd, COUNT(*) AS requests,
       COUNT(DISTINCT key_id) AS keys, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
       COALESCE(SUM(completion_tokens), 0) AS completion_tokens
FROM usage WHERE ts >= ? AND ts < ?
GROUP BY tenant
"""


def tenant_figures(store: Store, since: float, until: float) -> dict[str, Row]:
    """tenant -> {revenue_usd, requests, keys, prompt_tokens, completion_tokens} in [since, until)."""
    return {str(r["tenant"]): r for r in store.query(_PER_TENANT, (since, until))}


def known_tenants(store: Store) -> set[str]:
    return {str(r["tenant"]) for r in store.query("SELECT DISTINCT tenant FROM usage")}
