"""Opportunities, `tasks assign` and `revenue` on a real PostgreSQL store (started by the test)."""

from __future__ import annotations

import time

import pytest
from tests.test_opportunities import SYSTEM, put
from tests.test_postgres import pg_url, pytestmark  # noqa: F401  (the server fixture and its skip rule)

from insource.analytics.opportunities import find_opportunities
from insource.analytics.revenue import revenue_report
from insource.service.templates import assign_template
from insource.store.postgres import PgStore


def test_opportunities_assign_and_revenue_on_postgres(pg_url: str) -> None:  # noqa: F811
    store = PgStore(pg_url)
    t0 = time.time() - 3600
    for i in range(9):
        put(
            store,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"pg ticket {i}"}],
            "tech",
            t0 + i,
        )
    for i in range(5):
        put(store, [{"role": "user", "content": f"Q: pg headline {i}\nA:"}], "up", t0 + 20 + i)
    rows = find_opportunities(store)
    by_text = {r["template"]: r for r in rows}
    route = by_text[f"[system] {SYSTEM}\n[user] <*>"]
    assert route["requests"] == 9 and route["kind"] == "classification"
    assert by_text["[user] Q: <*>\nA:"]["requests"] == 5
    assert assign_template(store, route["template_id"], "pg-router")["tagged"] == 9
    report = revenue_report(store)
    assert report["tenants"][0]["tenant"] == "t" and report["total_usd"] == pytest.approx(14 * 0.001)
    assert report["hhi"] == pytest.approx(10_000) and report["concentration"] == "high"
