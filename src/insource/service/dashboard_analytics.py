"""The dashboard's sections backed by the analytics functions (forecast, savings, opportunities, revenue): each
calls one function and lays its result out as a panel. Each function's module is imported when its section is
built, never on the gateway's path; costly ones are reused for a while per process (`_cached`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from insource.config import Config
from insource.errors import InsourceError
from insource.service.dashboard_panels import Span, cols
from insource.service.dashboard_types import Chart, Figure, Panel, Series
from insource.store import Store

_CACHE: dict[tuple[str, int], tuple[float, Any]] = {}
_RUNNING: dict[tuple[str, int], Future[Any]] = {}
_LOCK = threading.Lock()
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="insource-ui-analysis")
PENDING = object()  # an analysis still running after the page's patience ran out


def _cached(name: str, store: Store, span: Span, compute: Callable[[], Any], ttl_s: float) -> Any:
    """A costly analysis (a forecast fit, mining every capture) at most once per `ttl_s` per store, run aside: a
    page waits `span.patience_s` for it, then shows the previous result or PENDING (the run goes on, for the next
    view). Its errors reach the page that waits."""
    key = (name, id(store))
    hit = _CACHE.get(key)
    if hit is not None and 0 <= span.now - hit[0] < ttl_s:
        return hit[1]
    with _LOCK:
        running = _RUNNING.get(key)
        if running is None:
            running = _RUNNING[key] = _POOL.submit(_run, key, span.now, compute)
    try:
        return running.result(timeout=span.patience_s)
    except TimeoutError:
        return hit[1] if hit is not None else PENDING


def _run(key: tuple[str, int], now: float, compute: Callable[[], Any]) -> Any:
    try:
        value = compute()
        _CACHE[key] = (now, value)
        return value
    finally:
        with _LOCK:
            _RUNNING.pop(key, None)


def _pending(panel_id: str, title: str, what: str) -> Panel:
    text = f"{what} is still running (it reads every record on a large store): reload this page in a minute."
    return Panel(id=panel_id, title=title, columns=cols("status"), rows=[], empty=text)


@dataclass
class Outlook:
    """The forecast's part of the overview: key figures, the panel, and when each budget runs out."""

    figures: list[Figure]
    panel: Panel
    exhausted_on: dict[tuple[str, str], str | None]


def forecast(cfg: Config, store: Store, span: Span) -> Outlook:
    """This month's forecast with its 80% band (`insource forecast`), when the function is available."""
    from insource.service.money import forecast_report

    try:
        report = _cached("forecast", store, span, lambda: forecast_report(cfg, store, now=span.now), ttl_s=600.0)
    except InsourceError as exc:  # e.g. the analytics extra is not installed: the message says what to do
        return Outlook([], _forecast_panel(None, exc.message), {})
    if report is PENDING:
        return Outlook([], _pending("forecast", "Spend forecast", "The forecast"), {})
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
    from insource.service.money import savings_report

    return savings_panel(savings_report(store))


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
    from insource.analytics.opportunities import find_opportunities

    found = _cached("opportunities", store, span, lambda: find_opportunities(store), ttl_s=600.0)
    if found is PENDING:
        return _pending("opportunities", "What to insource next", "Mining the captured traffic")
    return opportunities_panel(found)


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
    from insource.analytics.revenue import revenue_report

    report = _cached("revenue", store, span, lambda: revenue_report(store), ttl_s=60.0)
    if report is PENDING:
        return [], [_pending("revenue", "Revenue per tenant", "The revenue report (with each tenant's traffic)")]
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
