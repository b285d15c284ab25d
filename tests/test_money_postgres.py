"""Forecast, savings and make-or-buy on a real PostgreSQL server give the same figures as on SQLite."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from tests.test_postgres import pg_url, pytestmark  # noqa: F401  (the server fixture, and its skip rule)
from tests.test_savings_makebuy import _usage

from insource.config import parse_config
from insource.service.keys import create_key
from insource.service.money import forecast_report, makebuy_report, savings_report
from insource.store.postgres import PgStore

DAY = 86400.0


def fresh(url: str) -> PgStore:
    store = PgStore(url)
    for table in ("usage", "usage_imports", "usage_daily", "usage_daily_lite", "keys"):
        store.execute(f"DELETE FROM {table}")
    store.execute("UPDATE usage_daily_zone SET zone = 'UTC'")
    return store


def test_forecast_on_postgres(pg_url: str) -> None:  # noqa: F811
    """$10 a day for 19 days up to 2026-03-10: every figure is exact (as in test_forecast)."""
    store = fresh(pg_url)
    key_id = create_key(store, b"s" * 32, "acme", budget_usd=150.0)["id"]
    first = dt.datetime(2026, 2, 20, 1, tzinfo=dt.UTC).timestamp()
    rows = [_usage(i, "intent", "openai:gpt-4o-mini", 10.0, ts=first + i * DAY, key_id=key_id) for i in range(19)]
    store.write_batch([("usage", row, False) for row in rows])
    now = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC).timestamp()
    cfg = parse_config({"tenants": {"acme": {"budget_usd": 1000}}}, Path("."))
    out = forecast_report(cfg, store, now=now)
    assert out["month_to_date_usd"] == pytest.approx(100.0)
    assert out["forecast_month_usd"] == pytest.approx({"p10": 310.0, "p50": 310.0, "p90": 310.0})
    budgets = {b["name"]: (b["spent_usd"], b["exhausted_on"]) for b in out["budgets"]}
    assert budgets == {key_id: (pytest.approx(100.0), "2026-03-15"), "acme": (pytest.approx(100.0), None)}


def test_savings_and_makebuy_on_postgres(pg_url: str) -> None:  # noqa: F811
    store = fresh(pg_url)
    rows = [_usage(i, "intent", "intent@v1", 0.0001, cost_avoided_usd=0.002) for i in range(4)]
    rows += [_usage(10 + i, "intent", "openai:gpt-4o-mini", 0.002, endpoint="audit") for i in range(2)]
    rows += [_usage(20, "intent", "openai:gpt-4o-mini", 0.002)]
    store.write_batch([("usage", row, False) for row in rows])
    out = savings_report(store)
    (row,) = out["rows"]
    assert (row["task"], row["requests"], row["insourced"]) == ("intent", 5, 4)
    assert row["net_savings_usd"] == pytest.approx(0.008 - 0.0004 - 0.004)
    cfg = parse_config({"inhouse": {"cpu_usd_per_hour": 0.36}}, Path("/nonexistent"))
    buy = makebuy_report(cfg, store, "intent", now=time.time())  # no registry: the gateway's measured CPU cost
    assert buy["monthly_requests"] == pytest.approx(5 * 30)  # five answered today
    assert buy["monthly_api_usd"] == pytest.approx(0.01 * 30)
    assert buy["inhouse_monthly_usd"] == pytest.approx(0.0001 * 150)
