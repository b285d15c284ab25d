"""Make or buy: a task's monthly API bill against serving it in house. Pure arithmetic; formulas in
docs/economics.md.

A month is 30 days (720 hours) throughout.
- CPU student: each request costs its measured CPU seconds at `[inhouse] cpu_usd_per_hour`, divided by the
  utilisation (the share of paid CPU time that does useful work); no fixed cost.
- GPU: GPU hours = requests / (throughput_rps × 3600 × utilisation), never less than one GPU for the whole
  month (720 hours): you rent at least one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from insource.analytics.savings import AUDIT, is_student
from insource.store.usage_queries import UsageRow

DAYS_PER_MONTH = 30.0
HOURS_PER_MONTH = DAYS_PER_MONTH * 24


@dataclass(frozen=True, slots=True)
class Cpu:
    seconds_per_request: float
    usd_per_hour: float
    utilisation: float = 1.0

    def usd_per_request(self) -> float:
        return self.seconds_per_request * self.usd_per_hour / 3600.0 / self.utilisation

    def monthly_usd(self, requests: float) -> float:
        return requests * self.usd_per_request()

    def fixed_usd(self) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class Gpu:
    usd_per_hour: float
    throughput_rps: float
    utilisation: float = 1.0

    def usd_per_request(self) -> float:
        return self.usd_per_hour / (self.throughput_rps * 3600.0 * self.utilisation)

    def monthly_usd(self, requests: float) -> float:
        hours = max(HOURS_PER_MONTH, requests / (self.throughput_rps * 3600.0 * self.utilisation))
        return hours * self.usd_per_hour

    def fixed_usd(self) -> float:
        """The least a month costs: one GPU for 720 hours."""
        return HOURS_PER_MONTH * self.usd_per_hour


@dataclass(frozen=True, slots=True)
class Traffic:
    """A task's recent traffic, from daily rollup rows (keys: day, served_by, endpoint)."""

    requests: int  # answered callers' requests
    days: int  # days from the task's first request in the window to today, 1..30 (0: no traffic)
    api_usd: float  # what the teacher was paid, plus what it would have been paid for the students' answers
    student_usd: float
    insourced: int
    top_student: str | None  # the student that answered most of them

    def monthly_requests(self) -> float:
        return self.requests * DAYS_PER_MONTH / self.days if self.days else 0.0

    def api_usd_per_request(self) -> float:
        return self.api_usd / self.requests if self.requests else 0.0


def traffic(rows: Iterable[UsageRow], today: dt.date) -> Traffic:
    requests = insourced = 0
    api = student = 0.0
    first: str | None = None
    by_student: dict[str, int] = {}
    for row in rows:
        served_by, endpoint = row.keys.get("served_by"), row.keys.get("endpoint")
        if endpoint == AUDIT:
            continue
        answered = row.requests - row.refused
        requests += answered
        first = row.keys["day"] if first is None else min(first, row.keys["day"])
        if is_student(served_by, endpoint):
            insourced += answered
            api += row.cost_avoided_usd
            student += row.cost_usd
            by_student[str(served_by)] = by_student.get(str(served_by), 0) + answered
        else:
            api += row.cost_usd
    span = 0 if first is None else (today - dt.date.fromisoformat(first)).days + 1
    days = 0 if first is None else max(1, min(int(DAYS_PER_MONTH), span))
    top = max(sorted(by_student), key=lambda name: by_student[name]) if by_student else None
    return Traffic(requests, days, api, student, insourced, top)


def break_even(api_usd_per_request: float, serving: Cpu | Gpu) -> float | None:
    """Requests a month from which serving in house costs no more than the API; None when it never does."""
    marginal = serving.usd_per_request()
    if api_usd_per_request <= 0 or marginal > api_usd_per_request:
        return None
    return serving.fixed_usd() / api_usd_per_request


def make_or_buy(
    task: str,
    monthly_requests: float,
    api_usd_per_request: float,
    serving: Cpu | Gpu,
    training_usd: float,
) -> dict[str, Any]:
    """The `makebuy --json` object (payback_days: days of savings that pay for training; None when the
    in-house way saves nothing)."""
    api = monthly_requests * api_usd_per_request
    inhouse = serving.monthly_usd(monthly_requests)
    savings = api - inhouse
    payback = None if savings <= 0 else round(training_usd / (savings / DAYS_PER_MONTH), 2)
    even = break_even(api_usd_per_request, serving)
    return {
        "task": task,
        "monthly_requests": round(monthly_requests, 2),
        "monthly_api_usd": round(api, 6),
        "inhouse_monthly_usd": round(inhouse, 6),
        "monthly_savings_usd": round(savings, 6),
        "break_even_requests_per_month": None if even is None else round(even, 2),
        "payback_days": payback,
    }
