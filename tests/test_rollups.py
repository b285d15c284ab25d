"""Daily rollups against the raw records they sum, on SQLite: known answers, timezones, replays, the backfill."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from insource.store import Store
from insource.store.usage_queries import UsageFilter, daily_spend, day_span, usage_by, usage_total
from insource.store.writer import BatchWriter

MEASURES = ("requests", "refused", "audits", "errors", "prompt_tokens", "completion_tokens", "cost_usd")
T0 = dt.datetime(2026, 3, 25, tzinfo=dt.UTC).timestamp()  # Berlin moves to summer time on 2026-03-29


def usage_row(i: int, ts: float, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"req-{i}",
        "ts": ts,
        "tenant": "acme",
        "key_id": "key-1",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "served_by": "openai:gpt-4o-mini",
        "task": "intent",
        "status": 200,
        "prompt_tokens": 10,
        "cached_tokens": 0,
        "completion_tokens": 2,
        "reasoning_tokens": 0,
        "cost_usd": 0.001,
        "cost_avoided_usd": 0.0,
        "attempts": 1,
    }
    row.update(over)
    return row


def random_rows(n: int, seed: int = 7, days: int = 10) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.random()
        served = rng.choice(["openai:gpt-4o-mini", "azure:gpt-4o", "intent@v2"])
        over: dict[str, Any] = {
            "tenant": rng.choice(["acme", "globex", "initech"]),
            "key_id": rng.choice(["k1", "k2", "k3", "k4"]),
            "model": rng.choice(["gpt-4o-mini", "gpt-4o", None]),
            "task": rng.choice(["intent", "headline", None]),
            "served_by": served,
            "prompt_tokens": rng.randint(0, 5000),
            "completion_tokens": rng.randint(0, 500),
            "cost_usd": round(rng.random() / 100, 6),
            "cost_avoided_usd": round(rng.random() / 100, 6) if "@" in served else 0.0,
        }
        if kind < 0.1:  # refused by insource before any answer: no upstream call
            over.update(served_by=None, status=rng.choice([400, 401, 429]), cost_usd=0.0, attempts=0)
        elif kind < 0.15:  # an upstream failure after retries: not refused
            over.update(served_by=None, status=rng.choice([400, 502]), cost_usd=0.0, attempts=3)
        elif kind < 0.25:
            over.update(endpoint="audit", served_by="openai:gpt-4o-mini")
        rows.append(usage_row(i, T0 + rng.random() * days * 86_400, **over))
    return rows


def expected(rows: list[dict[str, Any]], zone: str, dim: str) -> dict[tuple[str, Any], dict[str, float]]:
    """The answer computed the slow way, record by record."""
    tz = ZoneInfo(zone)
    out: dict[tuple[str, Any], dict[str, float]] = {}
    for r in rows:
        day = dt.datetime.fromtimestamp(r["ts"], tz).date().isoformat()
        audit = r["endpoint"] == "audit"
        refused = not audit and r["served_by"] is None and r["attempts"] == 0
        value = "insource" if dim == "served_by" and r[dim] is None else r[dim]  # nobody answered: insource
        cell = out.setdefault((day, value), dict.fromkeys(MEASURES, 0.0))
        cell["requests"] += 0 if audit else 1
        cell["refused"] += refused
        cell["audits"] += audit
        cell["errors"] += not audit and r["status"] >= 400
        for m in ("prompt_tokens", "completion_tokens", "cost_usd"):
            cell[m] += r[m]
    return out


def as_table(store: Store, dim: str, flt: UsageFilter = UsageFilter()) -> dict[tuple[str, Any], dict[str, float]]:
    return {
        (row.keys["day"], row.keys[dim]): {m: getattr(row, m) for m in MEASURES}
        for row in daily_spend(store, flt, by=dim)
    }


def assert_same(got: dict[Any, dict[str, float]], want: dict[Any, dict[str, float]]) -> None:
    assert set(got) == set(want)
    for key, cell in want.items():
        for m, value in cell.items():
            assert got[key][m] == pytest.approx(value, abs=1e-9), (key, m)


def test_rollups_written_by_the_writer_equal_the_records(tmp_path: Path) -> None:
    rows = random_rows(3000)
    store = Store(tmp_path / "r.db", "Europe/Berlin")
    writer = BatchWriter(store, tmp_path / "spool", batch_size=250)
    for row in rows:
        writer.submit("usage", row)
    writer.close()
    assert_same(as_table(store, "task"), expected(rows, "Europe/Berlin", "task"))
    assert_same(as_table(store, "tenant"), expected(rows, "Europe/Berlin", "tenant"))
    assert_lite_matches(store)
    by_key = {(r.keys["day"], r.keys["key"]): r.cost_usd for r in usage_by(store, ["day", "key"])}
    assert sum(by_key.values()) == pytest.approx(sum(r["cost_usd"] for r in rows))
    total = usage_total(store)
    assert total.requests == sum(r["endpoint"] != "audit" for r in rows)
    assert total.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert total.cached_tokens == 0 and total.cost_avoided_usd == pytest.approx(
        sum(r["cost_avoided_usd"] for r in rows)
    )


def test_a_replayed_batch_is_not_counted_twice(tmp_path: Path) -> None:
    rows = random_rows(400, seed=3)
    store = Store(tmp_path / "r.db")
    store.write_batch([("usage", r, False) for r in rows[:300]])
    store.write_batch([("usage", r, True) for r in rows])  # a spool replay: 300 already there, 100 new
    assert_same(as_table(store, "task"), expected(rows, "UTC", "task"))
    with pytest.raises(Exception, match="UNIQUE"):  # a duplicate outside a replay fails the batch, rollups too
        store.write_batch([("usage", usage_row(10_000, T0), False), ("usage", rows[0], False)])
    assert_same(as_table(store, "task"), expected(rows, "UTC", "task"))


def test_half_past_eleven_utc_is_tomorrow_in_berlin(tmp_path: Path) -> None:
    late = dt.datetime(2026, 11, 3, 23, 30, tzinfo=dt.UTC).timestamp()
    india = dt.datetime(2026, 11, 3, 18, 31, tzinfo=dt.UTC).timestamp()  # 00:01 on the 4th in Kolkata (+5:30)
    rows = [
        usage_row(1, late, cost_usd=1.0),
        usage_row(2, india - 120, cost_usd=2.0),
        usage_row(3, india, cost_usd=4.0),
    ]
    utc = Store(tmp_path / "r.db")
    utc.write_batch([("usage", r, False) for r in rows])
    assert {r.keys["day"]: r.cost_usd for r in daily_spend(utc)} == {"2026-11-03": 7.0}
    utc.close()
    berlin = Store(tmp_path / "r.db", "Europe/Berlin")  # the zone changed: the rollups are rebuilt
    assert berlin.report_timezone() == "Europe/Berlin"
    assert {r.keys["day"]: r.cost_usd for r in daily_spend(berlin)} == {"2026-11-03": 6.0, "2026-11-04": 1.0}
    berlin.close()
    kolkata = Store(tmp_path / "r.db", "Asia/Kolkata")
    assert {r.keys["day"]: r.cost_usd for r in daily_spend(kolkata)} == {"2026-11-03": 2.0, "2026-11-04": 5.0}
    assert day_span(kolkata) == (dt.date(2026, 11, 3), dt.date(2026, 11, 4))
    kolkata.write_batch([("usage", usage_row(4, india - 90, cost_usd=8.0), False)])  # written in Kolkata days
    assert {r.keys["day"]: r.cost_usd for r in daily_spend(kolkata)} == {"2026-11-03": 10.0, "2026-11-04": 5.0}


def test_rebuild_across_summer_time_equals_writing_in_the_zone(tmp_path: Path) -> None:
    rows = random_rows(2000, seed=11)
    direct = Store(tmp_path / "a.db", "Europe/Berlin")
    direct.write_batch([("usage", r, False) for r in rows])
    rebuilt = Store(tmp_path / "b.db", "America/New_York")
    rebuilt.write_batch([("usage", r, False) for r in rows])
    rebuilt.close()
    rebuilt = Store(tmp_path / "b.db", "Europe/Berlin")
    dump = "SELECT * FROM usage_daily ORDER BY day, tenant, key_id, model, task, served_by, endpoint"
    a, b = direct.query(dump), rebuilt.query(dump)
    assert [[v for k, v in r.items() if "usd" not in k] for r in a] == [
        [v for k, v in r.items() if "usd" not in k] for r in b
    ]
    assert [r["cost_usd"] for r in a] == pytest.approx([r["cost_usd"] for r in b])
    assert_same(as_table(rebuilt, "served_by"), expected(rows, "Europe/Berlin", "served_by"))
    assert_lite_matches(rebuilt)


def test_migration_backfills_existing_records(tmp_path: Path) -> None:
    rows = random_rows(500, seed=5)
    store = Store(tmp_path / "r.db")
    store.write_batch([("usage", r, False) for r in rows])
    tables = ("usage_daily", "usage_daily_lite", "usage_daily_keys", "usage_imports", "usage_daily_zone")
    for table in tables:  # back to a store from before the rollups
        store.execute(f"DROP TABLE {table}")
    store.execute("DELETE FROM _migrations WHERE name IN ('m005_usage_rollups', 'm007_usage_rollup_keys')")
    store.close()
    upgraded = Store(tmp_path / "r.db")
    assert_same(as_table(upgraded, "task"), expected(rows, "UTC", "task"))
    assert_lite_matches(upgraded)


def assert_lite_matches(store: Store) -> None:
    """Each smaller rollup table holds exactly `usage_daily` summed over the columns it lacks."""
    from insource.store.rollups import TABLES

    sums = "SUM(requests) AS r, SUM(refused) AS f, SUM(audits) AS a, SUM(prompt_tokens) AS p, SUM(cost_usd) AS c"
    for table, keys in TABLES[:-1]:
        dims = ", ".join(keys)
        full = store.query(f"SELECT {dims}, {sums} FROM usage_daily GROUP BY {dims} ORDER BY {dims}")
        small = store.query(f"SELECT {dims}, {sums} FROM {table} GROUP BY {dims} ORDER BY {dims}")
        assert len(full) == len(small) > 0, table
        for a, b in zip(full, small, strict=True):
            assert {k: v for k, v in a.items() if k != "c"} == {k: v for k, v in b.items() if k != "c"}
            assert a["c"] == pytest.approx(b["c"])


def test_filters_and_dimensions(tmp_path: Path) -> None:
    rows = random_rows(1500, seed=9)
    store = Store(tmp_path / "r.db")
    store.write_batch([("usage", r, False) for r in rows])
    since, until = dt.date(2026, 3, 27), dt.date(2026, 3, 29)
    flt = UsageFilter(since=since, until=until, tenant="acme", provider="openai")
    got = usage_total(store, flt)
    want = [
        r
        for r in rows
        if since <= dt.datetime.fromtimestamp(r["ts"], dt.UTC).date() <= until
        and r["tenant"] == "acme"
        and (r["served_by"] or "").startswith("openai:")
    ]
    assert got.cost_usd == pytest.approx(sum(r["cost_usd"] for r in want))
    assert got.requests + got.audits == len(want)
    providers = {r.keys["provider"]: r.requests + r.audits for r in usage_by(store, ["provider"])}
    assert providers == {
        "openai": sum((r["served_by"] or "").startswith("openai:") for r in rows),
        "azure": sum((r["served_by"] or "").startswith("azure:") for r in rows),
        "insource": sum(r["served_by"] in ("intent@v2", None) for r in rows),  # students and nobody
    }
    served = {r.keys["served_by"]: r.refused for r in usage_by(store, ["served_by"])}
    assert served["insource"] == sum(r["served_by"] is None and r["attempts"] == 0 for r in rows) > 0
    assert usage_total(store, UsageFilter(served_by="insource")).requests == sum(r["served_by"] is None for r in rows)
    weeks = usage_by(store, ["week"])
    assert [r.keys["week"] for r in weeks] == ["2026-03-23", "2026-03-30"]  # Mondays, oldest first
    assert sum(r.cost_usd for r in weeks) == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert usage_by(store, ["month"])[0].keys == {"month": "2026-03"} or len(usage_by(store, ["month"])) == 2
    with pytest.raises(ValueError, match="unknown dimension"):
        usage_by(store, ["planet"])
    assert usage_by(Store(tmp_path / "empty.db"), ["task"]) == []
    assert usage_total(Store(tmp_path / "empty.db")).requests == 0


def test_the_migration_can_run_again(tmp_path: Path) -> None:
    """Renumbered when branches merge, the migration may run on a store that has its tables: nothing doubles."""
    from insource.store.migrations import MIGRATIONS

    rows = random_rows(300, seed=13)
    store = Store(tmp_path / "r.db")
    store.write_batch([("usage", r, False) for r in rows])
    with store.transaction():
        for name in ("m005_usage_rollups", "m007_usage_rollup_keys"):
            dict(MIGRATIONS)[name](store.conn())
    assert_same(as_table(store, "task"), expected(rows, "UTC", "task"))
    assert store.query("SELECT zone FROM usage_daily_zone") == [{"zone": "UTC"}]
    assert_lite_matches(store)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_budget_month_to_date_equals_the_records(tmp_path: Path, zone: str) -> None:
    from insource.service.spend import month_start, month_to_date
    from insource.store.usage_queries import month_to_date_from_records

    rows = random_rows(800, seed=17, days=20)  # 2026-03-25 .. 04-14: the month turns
    store = Store(tmp_path / "r.db", zone)
    store.write_batch([("usage", r, False) for r in rows])
    now = dt.datetime(2026, 4, 10, tzinfo=dt.UTC).timestamp()
    got = month_to_date(store, now)
    want = month_to_date_from_records(store, month_start(now))
    assert got.keys() == want.keys() and len(got) > 4
    assert all(got[k] == pytest.approx(want[k]) for k in want)
    april = [r for r in rows if r["ts"] >= month_start(now)]
    assert sum(v for k, v in got.items() if k.startswith("tenant:")) == pytest.approx(sum(r["cost_usd"] for r in april))


def test_each_query_reads_the_smallest_table_that_answers_it(tmp_path: Path) -> None:
    from insource.store import usage_queries as uq

    assert uq._table({"key_id", "day"}) == "usage_daily_keys"
    assert uq._table({"task", "day"}) == "usage_daily_lite"
    assert uq._table({"task", "key_id"}) == "usage_daily"
    rows = random_rows(1200, seed=23)
    store = Store(tmp_path / "r.db")
    store.write_batch([("usage", r, False) for r in rows])
    key_task = usage_by(store, ["task"], UsageFilter(key="k2"))  # a key filter with a task: the full table
    assert {r.keys["task"]: r.cost_usd for r in key_task} == pytest.approx(
        {
            t: sum(r["cost_usd"] for r in rows if r["key_id"] == "k2" and r["task"] == t)
            for t in ("intent", "headline", None)
        }
    )
    per_key = {r.keys["key"]: r.requests for r in usage_by(store, ["key"], UsageFilter(tenant="acme"))}
    assert per_key == {
        k: sum(r["endpoint"] != "audit" for r in rows if r["key_id"] == k and r["tenant"] == "acme")
        for k in ("k1", "k2", "k3", "k4")
    }
