"""Analytics benchmark: fill a store with usage records over 90 days, then time the reports on the rollups.

    python bench/analytics_bench.py [--records 1000000] [--days 90] [--store sqlite|postgresql://...] [--json]

Issue 12's full size is `--records 10000000` (minutes to fill on 2 cores). Records go through `Store.write_batch`
in batches of 1,000, the batch writer's path, so the daily rollups are kept as in production. Prints:

- fill rate with rollups, and the writer's CPU per record with and without them (the rollup work runs in the
  writer thread, off the request path: the gateway's per-request overhead is unchanged by construction);
- rollup rows vs records;
- the dashboard's overview page (built and rendered, as `/ui` serves it), first and warm;
- `spend --by task,day` (service function = the server time of `/admin/spend`), `spend --by tenant`,
  `daily_spend` for one tenant, month-to-date total, `forecast` (statsmodels imported before timing), `savings`:
  median of 5 runs each;
- the same `task,day` report computed from the raw records, for comparison.

Cardinality (realistic, not worst case): 20 tenants, 100 keys (each belongs to one tenant), 6 models, 12 tasks,
each task served by its teacher and for 4 tasks also by a student; a share of audits and refused requests.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from insource.config import parse_config
from insource.service.money import forecast_report, savings_report
from insource.service.spend import spend
from insource.store import Store
from insource.store.postgres import PgStore
from insource.store.usage_queries import UsageFilter, daily_spend, today, usage_total

TENANTS = [f"tenant-{i:02d}" for i in range(20)]
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "claude-sonnet", "gemini-flash"]
TASKS = [f"task-{i:02d}" for i in range(12)]
BATCH = 1000


def records(n: int, days: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    end = time.time()
    start = end - days * 86_400
    keys = [(f"key-{i:03d}", TENANTS[i % len(TENANTS)]) for i in range(100)]
    task_model = {t: MODELS[i % len(MODELS)] for i, t in enumerate(TASKS)}
    for i in range(n):
        key, tenant = keys[int(rng.random() ** 2 * len(keys))]  # a few keys carry most traffic
        task = TASKS[int(rng.random() ** 1.5 * len(TASKS))]
        model = task_model[task]
        r = rng.random()
        student = TASKS.index(task) < 4 and r < 0.5
        served: str | None = f"{task}@v1" if student else f"openai:{model}"
        endpoint, status = ("audit", 200) if r > 0.97 else ("chat", 200)
        if 0.95 < r <= 0.97:
            served, status = None, 429  # refused
        pt, ct = rng.randint(50, 2000), rng.randint(1, 300)
        yield {
            "id": f"b{i}",
            "ts": start + (i / n) * (end - start),
            "tenant": tenant,
            "key_id": key,
            "endpoint": endpoint,
            "model": model,
            "served_by": served,
            "task": task,
            "status": status,
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "cost_usd": 0.0 if served is None else (pt * 0.15 + ct * 0.6) / 1e6,
            "cost_avoided_usd": (pt * 0.15 + ct * 0.6) / 1e6 if student else 0.0,
        }


def fill(store: Store, n: int, days: int) -> float:
    t0 = time.perf_counter()
    batch: list[tuple[str, dict[str, Any], bool]] = []
    for i, row in enumerate(records(n, days)):
        batch.append(("usage", row, False))
        if len(batch) == BATCH:
            store.write_batch(batch)
            batch = []
        if i and i % 1_000_000 == 0:
            print(f"  {i:,} records in {time.perf_counter() - t0:.0f} s", flush=True)
    if batch:
        store.write_batch(batch)
    return time.perf_counter() - t0


def writer_cpu(store: Store, n: int = 100_000) -> tuple[float, float]:
    """Writer CPU µs per record: write_batch (rollups on) vs a plain executemany of the same rows."""
    rows = [dict(r, id=f"w{i}") for i, r in enumerate(records(n, 1, seed=2))]
    t0 = time.process_time()
    for s in range(0, n, BATCH):
        store.write_batch([("usage", r, False) for r in rows[s : s + BATCH]])
    with_rollups = (time.process_time() - t0) / n * 1e6
    cols = list(rows[0])
    sql = f"INSERT INTO usage ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    if store.dialect == "postgres":
        sql = sql.replace("?", "%s")
    t0 = time.process_time()
    for s in range(0, n, BATCH):
        chunk = [tuple(dict(r, id=f"x{s + j}").values()) for j, r in enumerate(rows[s : s + BATCH])]
        conn: Any = store.conn()
        with store.transaction():
            (conn.cursor() if store.dialect == "postgres" else conn).executemany(sql, chunk)
    plain = (time.process_time() - t0) / n * 1e6
    return with_rollups, plain


def timed(fn: Callable[[], Any], runs: int = 5) -> tuple[float, float]:
    """Median wall and CPU milliseconds (CPU: this process; on a busy machine wall time includes waiting)."""
    walls, cpus = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return round(statistics.median(walls) * 1000, 1), round(statistics.median(cpus) * 1000, 1)


def raw_task_day(store: Store) -> Any:
    return store.query(
        "SELECT strftime('%Y-%m-%d', ts, 'unixepoch') AS day, task, SUM(cost_usd) AS c, COUNT(*) AS n"
        " FROM usage GROUP BY day, task"
    )


def dashboard_overview(cfg: Any, store: Store) -> dict[str, Any]:
    """The dashboard's overview page as `/ui` serves it (page built, then rendered): the first time (it fits the
    forecast) and then (the forecast reused for 10 minutes)."""
    from insource.server.ui.render import render_page
    from insource.service.dashboard import overview

    def page() -> str:
        return render_page(overview(cfg, store), "csrf", title="Overview", active="overview")

    return {
        "dashboard_overview_first_ms_wall_cpu": timed(page, runs=1),
        "dashboard_overview_ms_wall_cpu": timed(page),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10_000_000, help="records to fill (1000000: quicker)")
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--store", default="sqlite", help="sqlite (a temporary file) or a postgresql:// URL (emptied)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.store == "sqlite":
        store: Store = Store(Path(tempfile.mkdtemp(prefix="insource-analytics-")) / "bench.db")
    else:
        store = PgStore(args.store)
        for table in ("usage", "usage_daily", "usage_daily_lite", "usage_daily_keys", "usage_imports"):
            store.execute(f"DELETE FROM {table}")
    fill_s = fill(store, args.records, args.days)
    rollup_rows = store.query_one("SELECT COUNT(*) AS n FROM usage_daily")
    lite_rows = store.query_one("SELECT COUNT(*) AS n FROM usage_daily_lite")
    month = today(store).replace(day=1)
    out = {
        "store": store.dialect,
        "records": args.records,
        "days": args.days,
        "fill_records_per_s": round(args.records / fill_s),
        "rollup_rows": int(rollup_rows["n"]) if rollup_rows else 0,
        "rollup_rows_without_key": int(lite_rows["n"]) if lite_rows else 0,
        "spend_task_day_ms_wall_cpu": timed(lambda: spend(store, "task,day")),
        "spend_key_day_ms_wall_cpu": timed(lambda: spend(store, "key,day")),
        "spend_tenant_ms_wall_cpu": timed(lambda: spend(store, "tenant")),
        "daily_spend_one_tenant_ms_wall_cpu": timed(lambda: daily_spend(store, UsageFilter(tenant="tenant-03"))),
        "month_to_date_ms_wall_cpu": timed(lambda: usage_total(store, UsageFilter(since=month))),
        "raw_task_day_ms_wall_cpu": timed(lambda: raw_task_day(store), runs=1),
    }
    cfg = parse_config({}, Path.cwd())
    forecast_report(cfg, store, horizon_days=30)  # imports numpy and statsmodels: not part of the figure
    out["forecast_ms_wall_cpu"] = timed(lambda: forecast_report(cfg, store, horizon_days=30))
    out["savings_ms_wall_cpu"] = timed(lambda: savings_report(store))
    out.update(dashboard_overview(cfg, store))
    with_rollups, plain = writer_cpu(store)
    out["writer_cpu_us_per_record_with_rollups"] = round(with_rollups, 2)
    out["writer_cpu_us_per_record_plain_insert"] = round(plain, 2)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:42s} {v:,}" if isinstance(v, int | float) else f"{k:42s} {v}", flush=True)


if __name__ == "__main__":
    main()
