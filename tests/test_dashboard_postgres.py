"""The dashboard's pages over a real PostgreSQL store (started by the test, as in test_postgres): the same
figures as the records."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests._dashboard_data import fill, write_config
from tests.test_postgres import pg_url, pytestmark  # noqa: F401  (the server fixture, and its skip rule)

from insource.config import load_config
from insource.errors import NotFound
from insource.service import dashboard
from insource.store import open_store


def test_every_page_builds_on_postgres_with_the_records_figures(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    config = write_config(tmp_path)
    text = config.read_text().replace('url = "sqlite:///./insource.db"', f'url = "{pg_url}"')
    config.write_text(text)
    facts = fill(config, days=20)
    cfg = load_config(config)
    store = open_store(cfg)
    assert store.dialect == "postgres"
    pages = {name: fn(cfg, store) for name, (_title, fn) in dashboard.PAGES.items()}
    spend = pages["overview"].panel("spend-by-model")
    assert spend is not None and sum(r[2] for r in spend.rows) == pytest.approx(facts["total_usd"], rel=1e-9)
    agreement = pages["routes"].panel("agreement")
    assert agreement is not None and {r[2] for r in agreement.rows} == {20}  # 20 comparisons a day, 19 agreeing
    assert {r[3] for r in agreement.rows} == {19}
    detail = dashboard.task_detail(cfg, store, "support-intent")
    assert detail.panel("audits") is not None and len(detail.panel("audits").rows) == 20  # type: ignore[union-attr]
    with pytest.raises(NotFound, match="no-such-task"):
        dashboard.task_detail(cfg, store, "no-such-task")
    assert dashboard.turn_route_off(cfg, store, "support-intent")["state"] == "off"
    assert dashboard.turn_route_off(cfg, store, "support-intent")["state"] == "off"  # once is enough
    kinds = [e["kind"] for e in store.query("SELECT kind FROM route_events WHERE task = 'support-intent'")]
    assert kinds.count("off") == 1
    routes = dashboard.routes(cfg, store).panel("routes")
    assert routes is not None and routes.rows[0][-1] == "off" and routes.actions == [None]
