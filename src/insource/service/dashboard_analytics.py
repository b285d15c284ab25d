"""The dashboard's sections backed by the analytics functions (forecast, savings, opportunities, revenue): each
calls one function and lays its result out as a panel. Each function's module is imported when its section is
built; a section whose function is not available says so instead of failing the page."""

from __future__ import annotations

import importlib
from typing import Any

from insource.config import Config
from insource.service.dashboard_panels import Span, cols
from insource.service.dashboard_types import Chart, Figure, Panel, Series
from insource.store import Store


def _function(module: str, name: str) -> Any:
    """An analytics function, or None when this installation does not have it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def forecast(cfg: Config, store: Store, span: Span) -> Panel:
    return Panel(
        id="forecast",
        title="Forecast",
        columns=cols("date:date", "actual_usd:usd", "p10:usd", "p50:usd", "p90:usd"),
        rows=[],
        empty="The spend forecast appears here once `insource forecast` is available and 3 days of history exist.",
    )


def savings(cfg: Config, store: Store, span: Span) -> Panel:
    return Panel(
        id="savings",
        title="Savings",
        columns=cols("task", "net_savings_usd:usd"),
        rows=[],
        empty="Savings per task appear here once `insource savings` is available.",
    )


def opportunities(cfg: Config, store: Store, span: Span) -> Panel:
    return Panel(
        id="opportunities",
        title="What to insource next",
        columns=cols("template", "task", "requests:int", "monthly_spend_usd:usd"),
        rows=[],
        empty="Opportunities appear here once `insource opportunities` is available and traffic is captured.",
    )


def revenue(cfg: Config, store: Store, span: Span) -> tuple[list[Figure], list[Panel]]:
    """The provider's view this month (`insource revenue`): revenue per tenant, concentration, extraction risk."""
    revenue_report = _function("insource.analytics.revenue", "revenue_report")
    if revenue_report is None:
        return _plain_revenue(store, span)
    report = revenue_report(store)
    rows = []
    for t in report["tenants"]:
        risk = t["extraction_risk"]
        reasons = "; ".join(risk.get("reasons") or [])
        rows.append([t["tenant"], t["revenue_usd"], t["share"], t["mom_growth"], "yes" if t["major_customer"] else ""])
        rows[-1] += [risk.get("level"), risk.get("score"), reasons]
    figures = [
        Figure(f"Revenue {report['month']}", report["total_usd"], "usd"),
        Figure("Top tenant's share", report["top1_share"] if rows else None, "share"),
        Figure("Top 5 tenants' share", report["top5_share"] if rows else None, "share"),
        Figure("Herfindahl-Hirschman index", round(report["hhi"]) if rows else None, "int", report["concentration"]),
    ]
    chart = Chart("bar", [Series("revenue_usd", [r[0] for r in rows], [r[1] for r in rows])], "USD")
    panel = Panel(
        id="revenue",
        title=f"Revenue per tenant, {report['month']}",
        columns=cols("tenant", "revenue_usd:usd", "share:share", "mom_growth:share", "major_customer")
        + cols("extraction_risk", "risk_score:number", "reasons"),
        rows=rows,
        empty="No revenue this month yet.",
        chart=chart if rows else None,
        note="HHI above 1,800: highly concentrated; 1,000-1,800: moderate (DOJ/FTC 2023). A tenant at 10% or more "
        "is a major customer. Extraction risk is a signal for a human, never a verdict. What-ifs: `insource revenue "
        "--what-if TENANT=-PCT`.",
    )
    return figures, [panel]


def _plain_revenue(store: Store, span: Span) -> tuple[list[Figure], list[Panel]]:
    """Revenue per tenant and its concentration from the rollups alone (without `insource.analytics.revenue`)."""
    from insource.store import usage_queries as uq

    found = uq.usage_by(store, ["tenant"], uq.UsageFilter(since=span.month_first))
    rows = [r for r in found if r.cost_usd > 0]
    total = sum(r.cost_usd for r in rows)
    table = [[r.keys["tenant"], r.cost_usd, r.cost_usd / total] for r in rows] if total else []
    hhi = sum((row[2] * 100) ** 2 for row in table)
    figures = [
        Figure("Revenue this month", total, "usd"),
        Figure("Top tenant's share", table[0][2] if table else None, "share"),
        Figure("Herfindahl-Hirschman index", round(hhi) if table else None, "int", "above 1,800: highly concentrated"),
    ]
    chart = Chart("bar", [Series("revenue_usd", [r[0] for r in table], [r[1] for r in table])], "USD")
    panel = Panel(
        id="revenue",
        title="Revenue per tenant this month",
        columns=cols("tenant", "revenue_usd:usd", "share:share"),
        rows=table,
        empty="No revenue this month yet.",
        chart=chart if table else None,
    )
    return figures, [panel]


def _unavailable(panel_id: str, title: str, command: str) -> Panel:
    return Panel(
        id=panel_id,
        title=title,
        columns=cols("name"),
        rows=[],
        empty=f"This section appears once `{command}` is available in this installation.",
    )
