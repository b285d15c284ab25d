"""Make or buy: a task's monthly API bill against serving it in house. Pure arithmetic; formulas in
docs/economics.md.

A month is 30 days (720 hours) throughout.
- CPU student: each request costs its measured CPU seconds at `[inhouse] cpu_usd_per_hour`, divided by the
  utilisation (the share of paid CPU time that does useful work); no fixed cost.
- GPU: GPU hours = requests / (throughput_rps × 3600 × utilisation), never less than one GPU for the whole
  month (720 hours): you rent at least one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
