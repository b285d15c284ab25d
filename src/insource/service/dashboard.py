"""The dashboard's pages (`/ui` and `insource report`): one function per page, each section one query or one
analytics function. Pages show figures, key ids and prefixes, task names and templates; never a key, a
hash or a redacted value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from insource.config import Config
from insource.errors import NotFound
from insource.service import dashboard_analytics as analytics
from insource.service import dashboard_panels as panels
from insource.service.dashboard_panels import Span
from insource.service.dashboard_types import Figure, Page
from insource.store import Store
from insource.store import dashboard as q
from insource.store import usage_queries as uq
from insource.store.usage_queries import UsageFilter

NO_TRAFFIC = (
    "No traffic recorded yet. Start the gateway (`insource serve`), create a key (`insource keys create --tenant "
    "NAME`) and send requests through it, import a bill's history (`insource usage import FILE --format csv`), "
    "or run `insource demo` to see every page filled."
)


def _empty(store: Store) -> bool:
    return uq.day_span(store) is None


def overview(cfg: Config, store: Store, now: float | None = None, patience_s: float | None = None) -> Page:
    span = Span.of(store, now, patience_s)
    mtd = uq.usage_total(store, UsageFilter(since=span.month_first))
    month = span.month_first.strftime("%B %Y")
    outlook = analytics.forecast(cfg, store, span)
    figures = [
        Figure("Spend this month", mtd.cost_usd, "usd", month),
        *outlook.figures,
        Figure("Cost avoided this month", mtd.cost_avoided_usd, "usd", "answered by students"),
        Figure("Requests this month", mtd.requests, "int", f"{mtd.audits:,} audits"),
    ]
    page_panels = [
        *panels.daily_spend(store, ("model", "task"), span),
        outlook.panel,
        panels.budgets(cfg, store, span, outlook.exhausted_on),
    ]
    return Page("overview", "Overview", figures, page_panels, NO_TRAFFIC if _empty(store) else None, span.as_of)


def tasks(cfg: Config, store: Store, now: float | None = None, patience_s: float | None = None) -> Page:
    span = Span.of(store, now, patience_s)
    page_panels = [panels.task_table(cfg, store, span), analytics.opportunities(cfg, store, span)]
    return Page("tasks", "Tasks and opportunities", [], page_panels, NO_TRAFFIC if _empty(store) else None, span.as_of)


def task_detail(
    cfg: Config, store: Store, task: str, now: float | None = None, patience_s: float | None = None
) -> Page:
    """One task's spend, agreement and route history; 404 for a task no record names."""
    if not q.task_known(store, task):
        raise NotFound(f"No record names the task {task!r}.", code="task_not_found")
    span = Span.of(store, now, patience_s)
    page_panels = [
        panels.task_spend(store, task, span),
        panels.agreement(store, span, task),
        panels.audits(store, span, task),
        panels.route_history(store, task),
    ]
    return Page(f"task:{task}", f"Task {task}", [], page_panels, None, span.as_of)


def routes(cfg: Config, store: Store, now: float | None = None, patience_s: float | None = None) -> Page:
    span = Span.of(store, now, patience_s)
    page_panels = [
        panels.route_table(cfg, store),
        panels.agreement(store, span),
        panels.audits(store, span),
        panels.rollbacks(store),
        panels.students(cfg),
        analytics.savings(cfg, store, span),
    ]
    return Page("routes", "Students and routes", [], page_panels, None, span.as_of)


def tenants(cfg: Config, store: Store, now: float | None = None, patience_s: float | None = None) -> Page:
    span = Span.of(store, now, patience_s)
    page_panels = [
        *panels.daily_spend(store, ("tenant",), span),
        panels.tenant_table(cfg, store, span),
        panels.key_table(store, span),
    ]
    return Page("tenants", "Tenants and keys", [], page_panels, NO_TRAFFIC if _empty(store) else None, span.as_of)


def provider(cfg: Config, store: Store, now: float | None = None, patience_s: float | None = None) -> Page:
    span = Span.of(store, now, patience_s)
    figures, page_panels = analytics.revenue(cfg, store, span)
    return Page("provider", "Provider view", figures, page_panels, NO_TRAFFIC if _empty(store) else None, span.as_of)


PageFn = Callable[..., Page]
PAGES: dict[str, tuple[str, PageFn]] = {
    "overview": ("Overview", overview),
    "tasks": ("Tasks", tasks),
    "routes": ("Students and routes", routes),
    "tenants": ("Tenants and keys", tenants),
    "provider": ("Provider", provider),
}


def turn_route_off(cfg: Config, store: Store, task: str) -> dict[str, Any]:
    """The dashboard's "turn off" button: `insource route off`, recorded as done from the dashboard."""
    from insource.service.routes import route_off

    return route_off(cfg, store, task, by="dashboard")
