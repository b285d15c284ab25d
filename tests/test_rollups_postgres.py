"""The daily rollups and the bill import on a real PostgreSQL server (started by the test, as in test_postgres)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from tests.test_postgres import pg_url, pytestmark  # noqa: F401  (the server fixture, and its skip rule)
from tests.test_rollups import as_table, assert_lite_matches, assert_same, expected, random_rows, usage_row
from typer.testing import CliRunner

from insource.cli import _register, app
from insource.store.postgres import PgStore
from insource.store.usage_queries import UsageFilter, daily_spend, usage_by, usage_total
from insource.store.writer import BatchWriter

runner = CliRunner()
_register()


def fresh(url: str, zone: str | None = None) -> PgStore:
    store = PgStore(url)
    store.execute("DELETE FROM usage")
    store.execute("DELETE FROM usage_imports")
    store.execute("DELETE FROM usage_daily")
    store.execute("DELETE FROM usage_daily_lite")
    store.execute("DELETE FROM usage_daily_keys")
    store.execute("UPDATE usage_daily_zone SET zone = 'UTC'")
    return PgStore(url, zone) if zone else store


def test_rollups_equal_the_records_on_postgres(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    rows = random_rows(2000, seed=21)
    store = fresh(pg_url, "Europe/Berlin")
    writer = BatchWriter(store, tmp_path / "spool", batch_size=300)
    for row in rows:
        writer.submit("usage", row)
    writer.close()
    store.write_batch([("usage", r, True) for r in rows[:500]])  # a replay: nothing new
    assert_same(as_table(store, "task"), expected(rows, "Europe/Berlin", "task"))
    total = usage_total(store, UsageFilter(provider="azure"))
    assert total.cost_usd == pytest.approx(
        sum(r["cost_usd"] for r in rows if (r["served_by"] or "").startswith("azure:"))
    )
    assert isinstance(total.requests, int) and isinstance(total.cost_usd, float)
    rebuilt = PgStore(pg_url, "America/New_York")  # another zone: rebuilt from the records on the server
    assert rebuilt.report_timezone() == "America/New_York"
    assert_same(as_table(rebuilt, "tenant"), expected(rows, "America/New_York", "tenant"))
    assert_lite_matches(rebuilt)


def test_half_past_eleven_utc_on_postgres(pg_url: str) -> None:  # noqa: F811
    late = dt.datetime(2026, 11, 3, 23, 30, tzinfo=dt.UTC).timestamp()
    store = fresh(pg_url)
    store.write_batch([("usage", usage_row(1, late, cost_usd=1.5), False)])
    assert [r.keys["day"] for r in daily_spend(store)] == ["2026-11-03"]
    berlin = PgStore(pg_url, "Europe/Berlin")
    assert [(r.keys["day"], r.cost_usd) for r in daily_spend(berlin)] == [("2026-11-04", 1.5)]
    berlin.write_batch([("usage", usage_row(2, late - 3600, cost_usd=2.0), False)])  # 23:30 in Berlin
    assert [(r.keys["day"], r.cost_usd) for r in daily_spend(berlin)] == [("2026-11-03", 2.0), ("2026-11-04", 1.5)]


def test_import_on_postgres(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    fresh(pg_url)
    config = tmp_path / "insource.toml"
    config.write_text(f'[store]\nurl = "{pg_url}"\n')
    bill = tmp_path / "bill.csv"
    bill.write_text(
        "date,tenant,model,task,requests,prompt_tokens,completion_tokens,cost_usd\n"
        "2026-11-01,acme,gpt-4o-mini,intent,100,1000000,100000,\n"
        "2026-11-02,globex,gpt-4o,,7,2000,300,1.25\n"
    )
    args = ["usage", "import", str(bill), "--format", "csv", "--json", "--config", str(config)]
    first, again = runner.invoke(app, args), runner.invoke(app, args)
    assert json.loads(first.output) == {"imported": 2, "skipped": 0}
    assert json.loads(again.output) == {"imported": 0, "skipped": 2}
    result = runner.invoke(app, ["spend", "--by", "tenant,day", "--json", "--config", str(config)])
    rows = json.loads(result.output)
    assert [(r["tenant"], r["day"], r["requests"]) for r in rows] == [
        ("acme", "2026-11-01", 100),
        ("globex", "2026-11-02", 7),
    ]
    assert rows[0]["cost_usd"] == pytest.approx(0.21)
    assert {r.keys["imported"] for r in usage_by(PgStore(pg_url), ["imported"])} == {True}
