"""The dashboard's pages (`/ui` and `insource report`): one function per page, each section one query or one
analytics function. Pages show figures, key ids and prefixes, task names and templates; never a key, a
hash or a redacted value."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from insource.config import Config
from insource.errors import NotFound
from insource.service import dashboard_panels as panels
from insource.service.dashboard_types import Figure, Page
from insource.service.spend import month_start
from insource.store import Store
from insource.store import dashboard as q

DAY_S = 86_400.0
HISTORY_DAYS = 90
NO_TRAFFIC = (
    "No traffic recorded yet. Start the gateway (`insource serve`), create a key (`insource keys create --tenant "
    "NAME`) and send requests through it, or run `insource demo` to see every page filled."
)


def window(now: float, days: int = HISTORY_DAYS) -> tuple[float, float]:
    """The last `days` UTC days, today included: (start, now)."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return today - (days - 1) * DAY_S, now + 1.0


def _as_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _empty(store: Store) -> bool:
    return q.usage_count(store) == 0


def overview(cfg: Config, store: Store, now: float | None = None) -> Page:
    now = time.time() if now is None else now
    start, end = window(now)
    mtd = q.totals(store, month_start(now), end)
    figures = [
        Figure("Spend this month", float(mtd["cost_usd"]), "usd", datetime.fromtimestamp(now, UTC).strftime("%B %Y")),
        Figure("Cost avoided this month", float(mtd["cost_avoided_usd"]), "usd", "answered by students"),
        Figure("Requests this month", int(mtd["requests"]), "int", f"{int(mtd['audits'])} audits"),
    ]
    page_panels = [
        panels.daily_spend(store, "model", start, end),
        panels.daily_spend(store, "task", start, end),
        panels.forecast(cfg, store, now),
        panels.budgets(cfg, store, now),
    ]
    return Page("overview", "Overview", figures, page_panels, NO_TRAFFIC if _empty(store) else None, _as_of(now))


def tasks(cfg: Config, store: Store, now: float | None = None) -> Page:
    now = time.time() if now is None else now
    start, end = window(now)
    page_panels = [panels.task_table(cfg, store, start, end), panels.opportunities(cfg, store, now)]
    return Page("tasks", "Tasks and opportunities", [], page_panels, NO_TRAFFIC if _empty(store) else None, _as_of(now))


def task_detail(cfg: Config, store: Store, task: str, now: float | None = None) -> Page:
    """One task's spend, agreement and route history; 404 for a task no record names."""
    if not q.task_known(store, task):
        raise NotFound(f"No record names the task {task!r}.", code="task_not_found")
    now = time.time() if now is None else now
    start, end = window(now)
    page_panels = [
        panels.task_spend(store, task, start, end),
        panels.agreement(store, start, task),
        panels.audits(store, start, task),
        panels.route_history(store, task),
    ]
    return Page(f"task:{task}", f"Task {task}", [], page_panels, None, _as_of(now))


def routes(cfg: Config, store: Store, now: float | None = None) -> Page:
    now = time.time() if now is None else now
    start, _end = window(now)
    page_panels = [
        panels.route_table(cfg, store),
        panels.agreement(store, start),
        panels.audits(store, start),
        panels.rollbacks(store),
        panels.students(cfg),
        panels.savings(cfg, store, now),
    ]
    return Page("routes", "Students and routes", [], page_panels, None, _as_of(now))


def tenants(cfg: Config, store: Store, now: float | None = None) -> Page:
    now = time.time() if now is None else now
    start, end = window(now)
    page_panels = [
        panels.daily_spend(store, "tenant", start, end),
        panels.tenant_table(cfg, store, now),
        panels.key_table(store, now),
    ]
    return Page("tenants", "Tenants and keys", [], page_panels, NO_TRAFFIC if _empty(store) else None, _as_of(now))


def provider(cfg: Config, store: Store, now: float | None = None) -> Page:
    now = time.time() if now is None else now
    figures, page_panels = panels.revenue(cfg, store, now)
    return Page("provider", "Provider view", figures, page_panels, NO_TRAFFIC if _empty(store) else None, _as_of(now))


PageFn = Callable[..., Page]
PAGES: dict[str, tuple[str, PageFn]] = {
    "overview": ("Overview", overview),
    "tasks": ("Tasks", tasks),
    "routes": ("Students and routes", routes),
    "tenants": ("Tenants and keys", tenants),
    "provider": ("Provider", provider),
}


def turn_route_off(cfg: Config, store: Store, task: str) -> dict[str, Any]:
    """The dashboard's "turn off" button: the teacher answers `task` again (every worker within a second)."""
    from insource.service.routes import config_policies, load_policies, record_event

    configured = config_policies(cfg)[0]
    policy = load_policies(cfg, store, configured).get(task)
    if policy is None:
        raise NotFound(f"No route for the task {task!r}.", code="route_not_found")
    config_row = None
    if not policy.since:  # a config route: a stored inactive row overrides it
        fields = ("model", "mode", "percent", "threshold", "target_agreement", "audit_rate", "floor")
        config_row = {name: getattr(policy, name) for name in fields}
    changed = q.deactivate_route(store, task, config_row)
    if changed:
        record_event(store, task, "off", {"model": policy.model, "mode": policy.mode, "by": "dashboard"})
    return {"task": task, "active": False, "changed": bool(changed)}
