"""The money reports: spend forecast, savings so far, make or buy. One function per report; the store gives
aggregates, `insource.analytics` computes (numpy/statsmodels load only when a forecast runs).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from insource.analytics.series import Daily, day_start, fill_days, local_date, zone
from insource.config import Config
from insource.errors import BadRequest, ModelNotFound, NotFound, NotReady
from insource.store import Store
from insource.store.usage_queries import UsageFilter, daily_spend, day_span, usage_by

if TYPE_CHECKING:
    from insource.analytics.makebuy import Traffic
    from insource.analytics.outlook import BudgetState

HISTORY_DAYS = 182  # the forecast learns from the last 26 weeks at most
SHARE_DAYS = 14  # a budget's part of the forecast: its scope's share of the last 14 days' spend
MAX_HORIZON_DAYS = 366
NO_USAGE = (
    "no usage recorded yet: send traffic through `insource serve` (or bring a bill's history in with "
    "`insource usage import FILE --format csv`), then run this again"
)


def report_zone(store: Store) -> ZoneInfo:
    """`[report] timezone` as the store's daily rollups use it: where every report cuts its days."""
    return zone(store.report_timezone())


def has_usage(store: Store) -> bool:
    return day_span(store) is not None


# -- forecast ---------------------------------------------------------------------------------
def forecast_report(
    cfg: Config, store: Store, *, horizon_days: int = 30, now: float | None = None, seed: int = 0
) -> dict[str, Any]:
    """The `insource forecast --json` object (see analytics/outlook.py)."""
    if importlib.util.find_spec("statsmodels") is None or importlib.util.find_spec("numpy") is None:
        raise NotReady("the forecast needs the analytics extra: pip install 'insource[analytics]'")
    import numpy as np

    from insource.analytics.outlook import Today, outlook

    if not 1 <= horizon_days <= MAX_HORIZON_DAYS:
        raise BadRequest(f"--horizon-days must be between 1 and {MAX_HORIZON_DAYS}, got {horizon_days}")
    tz = report_zone(store)
    now = time.time() if now is None else now
    today = local_date(now, tz)
    days = _spend_days(store, today)
    begun, ends = day_start(today, tz), day_start(today + dt.timedelta(days=1), tz)
    now_today = Today(today, days.value(today), min(1.0, max(0.0, (now - begun) / (ends - begun))))
    budgets = _budgets(cfg, store, today)
    body = outlook(days.between(days.start, today), now_today, horizon_days, budgets, np.random.default_rng(seed))
    as_of = dt.datetime.fromtimestamp(now, tz).isoformat(timespec="seconds")
    return {"as_of": as_of, "timezone": tz.key} | body


def _spend_days(store: Store, today: dt.date) -> Daily:
    """Spend per day from the first day with usage (at most HISTORY_DAYS ago) to today, every day present."""
    span = day_span(store)
    first = today if span is None else min(today, span[0])
    first = max(first, today - dt.timedelta(days=HISTORY_DAYS))
    rows = daily_spend(store, UsageFilter(since=first, until=today))
    return fill_days({dt.date.fromisoformat(r.keys["day"]): r.cost_usd for r in rows}, first, today + dt.timedelta(1))


def _budgets(cfg: Config, store: Store, today: dt.date) -> list[BudgetState]:
    """Every key and tenant with a budget: spent this month (gateway traffic, imported bills aside) and its
    share of the last days' spend."""
    from insource.analytics.outlook import BudgetState
    from insource.service.keys import list_keys

    month = UsageFilter(since=today.replace(day=1), until=today, imported=False)
    recent = UsageFilter(since=today - dt.timedelta(days=SHARE_DAYS), until=today - dt.timedelta(days=1))
    states: list[BudgetState] = []
    keys = [
        (k["id"], float(k["budget_usd"])) for k in list_keys(store) if k["budget_usd"] is not None and not k["revoked"]
    ]
    tenants = [(name, t.budget_usd) for name, t in sorted(cfg.tenants.items()) if t.budget_usd is not None]
    for kind, budgets in (("key", keys), ("tenant", tenants)):
        if not budgets:
            continue
        spent = {r.keys[kind]: r.cost_usd for r in usage_by(store, [kind], month)}
        last = {r.keys[kind]: r.cost_usd for r in usage_by(store, [kind], recent)}
        total = sum(last.values())
        for name, budget in budgets:
            share = last.get(name, 0.0) / total if total > 0 else 0.0
            states.append(BudgetState(kind, name, budget, spent.get(name, 0.0), share))
    return states


# -- savings ----------------------------------------------------------------------------------
def savings_report(store: Store, *, by: str = "task") -> dict[str, Any]:
    """The `insource savings --json` object, per task, per day of the reporting timezone, or per source of the
    savings (`student`, `cache`: the response cache, `teacher`, `audit`)."""
    from insource.analytics.savings import fold, fold_sources, savings_table

    if by not in ("task", "day", "source"):
        raise BadRequest(f"--by must be task or day (or source: student, cache, teacher), got {by!r}", param="by")
    gateway = UsageFilter(imported=False)  # imported bills are history from before insource: nothing to insource
    if by == "source":
        return savings_table(fold_sources(usage_by(store, ["served_by", "endpoint"], gateway)), by)
    dims = ["task", "served_by", "endpoint"] if by == "task" else ["day", "task", "served_by", "endpoint"]
    return savings_table(fold(usage_by(store, dims, gateway), by), by)


# -- make or buy ------------------------------------------------------------------------------
def makebuy_report(
    cfg: Config,
    store: Store,
    task: str,
    *,
    gpu_usd_per_hour: float | None = None,
    throughput_rps: float | None = None,
    utilisation: float | None = None,
    training_usd: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The `insource makebuy --json` object for `task`, from its last 30 days of traffic."""
    from insource.analytics.makebuy import DAYS_PER_MONTH, Cpu, Gpu, make_or_buy, traffic

    _check_options(gpu_usd_per_hour, throughput_rps, utilisation, training_usd)
    today = local_date(time.time() if now is None else now, report_zone(store))
    window = UsageFilter(since=today - dt.timedelta(days=int(DAYS_PER_MONTH) - 1), until=today, task=task)
    seen = traffic(usage_by(store, ["day", "served_by", "endpoint"], window), today)
    folder = _student_folder(cfg, task, seen.top_student)
    if folder is None and task not in _known_tasks(store):
        raise _unknown_task(store, task)
    serving: Cpu | Gpu
    if gpu_usd_per_hour is not None and throughput_rps is not None:
        serving = Gpu(gpu_usd_per_hour, throughput_rps, utilisation or 1.0)
    else:
        serving = Cpu(_cpu_seconds(cfg, task, folder, seen), cfg.inhouse.cpu_usd_per_hour, utilisation or 1.0)
    if training_usd is None:
        training_usd = _training_usd(cfg, folder)
    return make_or_buy(task, seen.monthly_requests(), seen.api_usd_per_request(), serving, training_usd)


def _known_tasks(store: Store) -> list[str]:
    return sorted(str(r.keys["task"]) for r in usage_by(store, ["task"]) if r.keys["task"] is not None)


def _check_options(gpu: float | None, rps: float | None, utilisation: float | None, training: float | None) -> None:
    if (gpu is None) != (rps is None):
        raise BadRequest("--gpu-usd-per-hour and --throughput-rps go together: give both to price a GPU, or neither")
    for name, value in (("--gpu-usd-per-hour", gpu), ("--throughput-rps", rps), ("--training-usd", training)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise BadRequest(f"{name} must be a finite number ≥ 0, got {value}")
    if rps is not None and rps <= 0:
        raise BadRequest(f"--throughput-rps must be above 0, got {rps}")
    if utilisation is not None and not (math.isfinite(utilisation) and 0 < utilisation <= 1):
        raise BadRequest(f"--utilisation must be in (0, 1], got {utilisation}")


def _unknown_task(store: Store, task: str) -> NotFound:
    tasks = _known_tasks(store)
    if not tasks:
        return NotFound(f"unknown task {task!r}: {NO_USAGE}", code="task_not_found")
    shown = ", ".join(tasks[:20]) + (", …" if len(tasks) > 20 else "")
    return NotFound(
        f"unknown task {task!r}: no usage record or registered student has it (tasks: {shown})", code="task_not_found"
    )


def _student_folder(cfg: Config, task: str, served_by: str | None) -> Path | None:
    """The student that answered most of the task's recent requests, else the task's newest usable one."""
    from insource.registry.entries import resolve

    for name in (served_by, task):
        if name is None:
            continue
        try:
            folder = resolve(cfg.registry_path(), name)
        except (ModelNotFound, NotReady):
            continue
        if folder.name.partition("@")[0] == task:
            return folder
    return None


def _cpu_seconds(cfg: Config, task: str, folder: Path | None, seen: Traffic) -> float:
    """CPU seconds per answer: the student's measured throughput (`insource eval`), else what its answers
    cost at the gateway (which charges their measured CPU time)."""
    from insource.registry.entries import EVAL_FILE, read_json

    if folder is not None and (folder / EVAL_FILE).is_file():
        latest = read_json(folder / EVAL_FILE).get("latest")
        rate = latest.get("answers_per_s_per_core") if isinstance(latest, dict) else None
        if isinstance(rate, int | float) and rate > 0:
            return 1.0 / float(rate)
    if seen.insourced and cfg.inhouse.cpu_usd_per_hour > 0:
        return seen.student_usd / seen.insourced * 3600.0 / cfg.inhouse.cpu_usd_per_hour
    where = f"its student {folder.name}" if folder is not None else f"task {task!r}"
    raise NotReady(
        f"no measured latency for {where}: run `insource distill --task {task}` and `insource eval --task {task} "
        "--model MODEL` first, or price a GPU with --gpu-usd-per-hour and --throughput-rps"
    )


def _training_usd(cfg: Config, folder: Path | None) -> float:
    """What training the student cost: its recorded training time at `[inhouse] cpu_usd_per_hour` (0 if none)."""
    from insource.registry.entries import read_model_info

    if folder is None:
        return 0.0
    try:
        metrics = read_model_info(folder).get("metrics")
    except NotReady:
        return 0.0
    seconds = metrics.get("train_seconds") if isinstance(metrics, dict) else None
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return 0.0
    return float(seconds) * cfg.inhouse.cpu_usd_per_hour / 3600.0
