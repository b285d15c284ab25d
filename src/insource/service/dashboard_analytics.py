"""The dashboard's sections backed by the analytics functions (forecast, savings, opportunities, revenue): each
calls one function and lays its result out as a panel. Each function's module is imported when its section is
built; a section whose function is not available says so instead of failing the page."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from insource.config import Config
from insource.errors import InsourceError
from insource.service.dashboard_panels import Span, cols
from insource.service.dashboard_types import Chart, Figure, Panel, Series
from insource.store import Store

_CACHE: dict[tuple[str, int], tuple[float, Any]] = {}


def _cached(name: str, store: Store, now: float, compute: Callable[[], Any], ttl_s: float = 60.0) -> Any:
    """A costly analysis (a forecast fit, mining every capture) at most once per `ttl_s` per store."""
    hit = _CACHE.get((name, id(store)))
    if hit is None or not 0 <= now - hit[0] < ttl_s:
        hit = _CACHE[(name, id(store))] = (now, compute())
    return hit[1]


def _function(module: str, name: str) -> Any:
    """An analytics function, or None when this installation does not have it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


FORECAST = ("insource.service.money", "forecast_report")  # returns the `insource forecast --json` object
SAVINGS = ("insource.service.money", "savings_report")  # returns the `insource savings --json` object
OPPORTUNITIES = ("insource.analytics.opportunities", "find_opportunities")  # the `opportunities --json` list


@dataclass
class Outlook:
    """The forecast's part of the overview: key figures, the panel, and when each budget runs out."""

    figures: list[Figure]
    panel: Panel
    exhausted_on: dict[tuple[str, str], str | None]


def forecast(cfg: Config, store: Store, span: Span) -> Outlook:
    """This month's forecast with its 80% band (`insource forecast`), when the function is available."""
    report_fn = _function(*FORECAST)
    if report_fn is None:
        empty = "The spend forecast appears here once `insource forecast` is available in this installation."
        return Outlook([], _forecast_panel(None, empty), {})
    try:
        report = _cached("forecast", store, span.now, lambda: report_fn(cfg, store, now=span.now), ttl_s=600.0)
    except InsourceError as exc:  # e.g. the analytics extra is not installed: the message says what to do
        return Outlook([], _forecast_panel(None, exc.message), {})
    return forecast_outlook(report)


def forecast_outlook(report: dict[str, Any]) -> Outlook:
    """Lay out an `insource forecast --json` object: figures, the daily chart with its band, budgets' end dates."""
    month = report.get("forecast_month_usd") or {}
    if any(not isinstance(month.get(p), int | float) for p in ("p10", "p50", "p90")):
        month = {}  # too little history: no forecast (the contract's figures are null)
    figures = []
    if month:
        note = f"80% interval ${month['p10']:,.2f} to ${month['p90']:,.2f}"
        figures.append(Figure(f"Forecast for {report.get('month')}", month["p50"], "usd", note))
        figures.append(Figure("Run-rate per month", report.get("run_rate_usd_per_month"), "usd"))
    empty = "Not enough history to forecast yet: 3 days of spend are needed (14 for weekly seasonality)."
    exhausted = {(b["scope"], b["name"]): b.get("exhausted_on") for b in report.get("budgets") or []}
    return Outlook(figures, _forecast_panel(report if month else None, empty), exhausted)


def _forecast_panel(report: dict[str, Any] | None, empty: str) -> Panel:
    daily = (report or {}).get("daily") or []
    rows = [[d["date"], d["actual_usd"], d["p10"], d["p50"], d["p90"]] for d in daily]
    chart = None
    if rows:
        past = [r for r in rows if r[1] is not None]
        ahead = [r for r in rows if r[1] is None]
        series = [Series("actual", [r[0] for r in past], [r[1] for r in past])]
        series.append(Series("forecast (p50)", [r[0] for r in ahead], [r[3] for r in ahead]))
        band = (
            Series("p10", [r[0] for r in ahead], [r[2] for r in ahead]),
            Series("80% interval", [r[0] for r in ahead], [r[4] for r in ahead]),
        )
        chart = Chart("band", [s for s in series if s.y], "USD per day", band=band if ahead else None)
    backtest = (report or {}).get("backtest_mape")
    note = f"Method: {report.get('method')}. " if report else ""
    note += f"Backtest error on this history (MAPE): {backtest:.1%}." if isinstance(backtest, int | float) else ""
    return Panel(
        id="forecast",
        title="Spend forecast",
        columns=cols("date:date", "actual_usd:usd", "p10:usd", "p50:usd", "p90:usd"),
        rows=rows,
        empty=empty,
        chart=chart,
        note=note,
    )


def savings(cfg: Config, store: Store, span: Span) -> Panel:
    """What insourcing saved per task (`insource savings`), when the function is available."""
    report_fn = _function(*SAVINGS)
    if report_fn is None:
        return _unavailable("savings", "Savings per task", "insource savings")
    return savings_panel(report_fn(store))


def savings_panel(report: dict[str, Any]) -> Panel:
    """Lay out an `insource savings --json` object."""
    names = ["requests", "insourced", "share_insourced", "teacher_cost_avoided_usd", "student_cost_usd"]
    names += ["audit_cost_usd", "net_savings_usd"]
    rows = [[r["task"], *(r[n] for n in names)] for r in report.get("rows") or []]
    chart = Chart("bar", [Series("net_savings_usd", [r[0] or "(untagged)" for r in rows], [r[7] for r in rows])])
    chart.y_title = "USD"
    total = report.get("total") or {}
    return Panel(
        id="savings",
        title="Savings per task",
        columns=cols("task", "requests:int", "insourced:int", "share_insourced:share", "teacher_cost_avoided_usd:usd")
        + cols("student_cost_usd:usd", "audit_cost_usd:usd", "net_savings_usd:usd"),
        rows=rows,
        empty="No savings yet: route a task to a student (`insource route set`) and its answers count here.",
        chart=chart if rows else None,
        note=f"Net savings in total: ${total.get('net_savings_usd', 0.0):,.2f} (avoided - student - audits)."
        if rows
        else "",
    )


def opportunities(cfg: Config, store: Store, span: Span) -> Panel:
    """Templates mined from captured traffic, ranked (`insource opportunities`); mined at most every 10 minutes."""
    find = _function(*OPPORTUNITIES)
    if find is None:
        return _unavailable("opportunities", "What to insource next", "insource opportunities")
    return opportunities_panel(_cached("opportunities", store, span.now, lambda: find(store), ttl_s=600.0))


def opportunities_panel(found: list[dict[str, Any]], top: int = 20) -> Panel:
    rows = [
        [
            o[name]
            for name in ("template_id", "template", "task", "requests", "monthly_spend_usd", "kind", "score", "next")
        ]
        for o in found[:top]
    ]
    chart = Chart("bar", [Series("score", [r[0] for r in rows], [r[6] for r in rows])], "score (USD x distillability)")
    return Panel(
        id="opportunities",
        title="What to insource next",
        columns=cols("template_id", "template", "task", "requests:int", "monthly_spend_usd:usd", "kind")
        + cols("score:number", "next"),
        rows=rows,
        empty="Nothing mined yet: capture traffic through `insource serve` (capture is on by default).",
        chart=chart if rows else None,
        note="Score: monthly spend x how distillable the answers look. Each row says what to run next.",
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
