"""This month's spend outlook: month to date, run-rate, the month's total with an 80% interval, a daily
forecast, and the day each budget runs out. Pure: typed daily series in, the `forecast --json` object out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from insource.analytics.forecast import MIN_DAYS, NONE, forecast
from insource.analytics.series import Daily, days_in_month, month_start, next_month

RUN_RATE_DAYS = 7  # run-rate: the mean of the last 7 complete days, times the days of this month
SHOWN_HISTORY_DAYS = 14  # `daily` shows this month's days, and at least the last 14


@dataclass(frozen=True, slots=True)
class BudgetState:
    scope: str  # "key" or "tenant"
    name: str
    budget_usd: float
    spent_usd: float  # this month, as the gateway counts it for admission
    share: float  # the scope's share of recent spend: its part of the forecast


@dataclass(frozen=True, slots=True)
class Today:
    day: dt.date
    spent_usd: float  # so far today
    elapsed: float  # the part of today gone by, 0..1


def usd(value: float) -> float:
    return round(float(value), 6)


def run_rate(history: Daily, today: Today) -> float:
    """USD per month at the recent pace: mean of the last complete days (or today's pace) × days this month."""
    recent = history.values[-RUN_RATE_DAYS:]
    per_day = float(np.mean(recent)) if recent else today.spent_usd / max(today.elapsed, 1 / 96)
    return per_day * days_in_month(today.day)


def exhausted_on(budget: BudgetState, today: Today, p50: Sequence[float]) -> dt.date | None:
    """The first day (today = p50[0]) on which the scope's month-to-date spend reaches its budget; budgets
    restart on the first of each month. None when that does not happen within the days of `p50`."""
    if budget.spent_usd >= budget.budget_usd:
        return today.day
    used = budget.spent_usd
    for i, total in enumerate(p50):
        day = today.day + dt.timedelta(days=i)
        if i > 0 and day.day == 1:
            used = 0.0
        used += budget.share * (max(0.0, total - today.spent_usd) if i == 0 else total)
        if used >= budget.budget_usd:
            return day
    return None


def _history_rows(history: Daily, today: Today) -> list[dict[str, Any]]:
    first = max(history.start, min(month_start(today.day), today.day - dt.timedelta(days=SHOWN_HISTORY_DAYS)))
    shown = history.between(first, today.day)
    return [
        {"date": d.isoformat(), "actual_usd": usd(v), "p10": usd(v), "p50": usd(v), "p90": usd(v)}
        for d, v in zip(shown.dates(), shown.values, strict=True)
    ]


def _budget_rows(budgets: Sequence[BudgetState], today: Today, p50: Sequence[float]) -> list[dict[str, Any]]:
    out = []
    for b in budgets:
        day = exhausted_on(b, today, p50)
        out.append(
            {
                "scope": b.scope,
                "name": b.name,
                "budget_usd": usd(b.budget_usd),
                "spent_usd": usd(b.spent_usd),
                "exhausted_on": None if day is None else day.isoformat(),
            }
        )
    return out


def outlook(
    history: Daily,
    today: Today,
    horizon_days: int,
    budgets: Sequence[BudgetState],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """`history`: the complete days before today (oldest first). Returns every key of `forecast --json` but
    `as_of` and `timezone`."""
    in_month = history.between(month_start(today.day), today.day)
    month_before_today = float(sum(in_month.values))
    head: dict[str, Any] = {
        "month": today.day.strftime("%Y-%m"),
        "month_to_date_usd": usd(month_before_today + today.spent_usd),
        "run_rate_usd_per_month": usd(run_rate(history, today)),
    }
    rows = _history_rows(history, today)
    if len(history.values) < MIN_DAYS:
        rows.append({"date": today.day.isoformat(), "actual_usd": usd(today.spent_usd)} | _flat(today.spent_usd))
        return head | {
            "forecast_month_usd": {"p10": None, "p50": None, "p90": None},
            "method": NONE,
            "backtest_mape": None,
            "daily": rows,
            "budgets": _budget_rows(budgets, today, []),
        }
    left_in_month = (next_month(today.day) - today.day).days  # today included
    paths, check = forecast(np.asarray(history.values, dtype=float), max(horizon_days + 1, left_in_month), rng)
    values = paths.values.copy()
    values[0] = np.maximum(values[0], today.spent_usd)  # today ends no lower than what it has already cost
    p10, p50, p90 = np.percentile(values, [10, 50, 90], axis=1)
    month = month_before_today + values[:left_in_month].sum(axis=0)
    for i in range(horizon_days + 1):
        day = today.day + dt.timedelta(days=i)
        actual = usd(today.spent_usd) if i == 0 else None
        rows.append(
            {"date": day.isoformat(), "actual_usd": actual, "p10": usd(p10[i]), "p50": usd(p50[i]), "p90": usd(p90[i])}
        )
    m10, m50, m90 = np.percentile(month, [10, 50, 90])
    return head | {
        "forecast_month_usd": {"p10": usd(m10), "p50": usd(m50), "p90": usd(m90)},
        "method": paths.method,
        "backtest_mape": None if check.mape is None else round(check.mape, 4),
        "daily": rows,
        "budgets": _budget_rows(budgets, today, list(p50[: horizon_days + 1])),
    }


def _flat(value: float) -> dict[str, float]:
    return {"p10": usd(value), "p50": usd(value), "p90": usd(value)}
