"""The demo's history: three months of a SYNTHETIC bill (made-up tenants, one at about a quarter of revenue, a
growing trend and quieter weekends), written as a CSV and brought in as `insource usage import` brings a real
bill in (rows marked imported), so the forecast, savings and provider pages have something to show."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

from insource.config import Config
from insource.store import Store

HISTORY_FILE = "synthetic-history.csv"
# tenant → share of revenue; the demo's own tenant is about a quarter of it
TENANTS = {"northwind": 0.33, "demo-shop": 0.25, "contoso": 0.2, "fabrikam": 0.14, "tailspin": 0.08}
MODELS = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.5, 10.0)}  # USD per million input, output tokens


def _day_total(day: int, days: int, weekday: int, rng: random.Random) -> float:
    """USD a day: ~$200 growing to ~$300 over the period, weekends at 60%, ±8% noise."""
    trend = 200.0 + 100.0 * day / max(days - 1, 1)
    return trend * (0.6 if weekday >= 5 else 1.0) * rng.uniform(0.92, 1.08)


def history_rows(today: dt.date, days: int = 90, seed: int = 7) -> list[dict[str, Any]]:
    """One row per day x tenant x model, up to yesterday (today belongs to the demo's live traffic)."""
    rng = random.Random(seed)
    rows = []
    for i in range(days):
        day = today - dt.timedelta(days=days - i)
        total = _day_total(i, days, day.weekday(), rng)
        for tenant, share in TENANTS.items():
            for model, (per_in, per_out) in MODELS.items():
                cost = total * share * (0.3 if model == "gpt-4o-mini" else 0.7)
                prompt = int(cost / (per_in + 0.25 * per_out) * 1e6)  # answers a quarter as long as prompts
                requests = max(1, prompt // 400)
                rows.append(  # untagged: the demo's task is its live traffic alone
                    {"date": day.isoformat(), "tenant": tenant, "model": model, "task": "", "requests": requests}
                    | {"prompt_tokens": prompt, "completion_tokens": prompt // 4, "cost_usd": round(cost, 6)}
                )
    return rows


def write_history(path: Path, today: dt.date) -> Path:
    import csv

    rows = history_rows(today)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def import_history(cfg: Config, store: Store, folder: Path) -> dict[str, Any]:
    """Write the synthetic bill into `folder` and import it; {"file", "imported", "days", "tenants"}."""
    from insource.service.usage_import import import_usage_csv
    from insource.store.usage_queries import today

    path = write_history(folder / HISTORY_FILE, today(store))
    result = import_usage_csv(store, cfg, path)
    return {"file": str(path), "imported": result.imported, "days": 90, "tenants": sorted(TENANTS)}
