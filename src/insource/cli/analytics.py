"""Analytics commands: what to insource next (`opportunities`, `tasks assign`) and the provider's view (`revenue`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from insource.cli import app
from insource.cli.common import (
    ConfigOpt,
    JsonOpt,
    console,
    get_config,
    handle_errors,
    literal,
    print_json,
    store_exists,
)
from insource.cli.data import open_existing_store, tasks_app
from insource.cli.tables import Cell, Col, CsvOpt, emit, print_table
from insource.errors import NotReady
from insource.store import open_store

OPPORTUNITY_COLUMNS = (
    Col("template"),
    Col("id", "id"),
    Col("task", drop=2),
    Col("requests", "num", short="reqs"),
    Col("USD/month", "num", short="USD/mo"),
    Col("kind", drop=3),
    Col("score", "num"),
    Col("next", drop=1),
)


@app.command("opportunities")
@handle_errors
def opportunities_cmd(config: ConfigOpt = None, json: JsonOpt = False, csv: CsvOpt = False) -> None:
    """Prompt templates mined from all captured traffic (tagged or not, with Drain / drain3), ranked by
    monthly spend × how distillable the answers look; each row says what to run next."""
    from insource.analytics.opportunities import find_opportunities

    cfg = get_config(config)
    rows = find_opportunities(open_store(cfg)) if store_exists(cfg) else []
    empty = "No captured traffic yet: send requests through `insource serve` with capture on, then re-run."
    if emit(rows, json=json, csv=csv, empty=empty):
        return
    print_table(OPPORTUNITY_COLUMNS, [_opportunity_cells(r) for r in rows])


def _opportunity_cells(r: dict[str, Any]) -> list[Cell]:
    text = r["template"] if len(r["template"]) <= 160 else r["template"][:157] + "..."
    return [
        literal(text, multiline=True),
        literal(r["template_id"]),
        literal(r["task"] or "-"),
        str(r["requests"]),
        f"{r['monthly_spend_usd']:.4f}",
        r["kind"],
        f"{r['score']:.4f}",
        literal(r["next"]),
    ]


@tasks_app.command("assign")
@handle_errors
def tasks_assign(
    template: Annotated[str, typer.Option("--template", help="Template id (from `insource opportunities`).")],
    task: Annotated[str, typer.Option("--task", help="Task name to give the template's requests.")],
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make a template's requests a task: past captures now (for `dataset build`), new requests at the gateway
    (every worker within a second), so untagged traffic becomes distillable without changing the app."""
    from insource.service.templates import assign_template

    result = assign_template(open_existing_store(get_config(config)), template, task)
    if json:
        print_json(result)
        return
    console.print(
        literal(f"template {result['template_id']} -> task {result['task']}: {result['tagged']} past requests tagged")
    )


@app.command("revenue")
@handle_errors
def revenue_cmd(
    month: Annotated[
        str | None,
        typer.Option("--month", help="YYYY-MM ([report] timezone); default: the latest month with usage."),
    ] = None,
    what_if: Annotated[
        list[str] | None,
        typer.Option("--what-if", help="TENANT=PCT: that tenant changes its spend by PCT% (-100..+1000); repeatable."),
    ] = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """The provider's view: revenue per tenant and share, month-over-month growth, top-1/top-5 share, HHI
    (DOJ/FTC 2023 reading), major customers (>= 10%), what-ifs, and a per-tenant extraction-risk signal with its
    reasons (a signal for a human, never a verdict)."""
    from insource.analytics.revenue import revenue_report

    cfg = get_config(config)
    if not store_exists(cfg):
        if what_if:
            raise NotReady("no usage recorded yet: nothing to run a what-if on")
        report = revenue_report_empty(month)
    else:
        report = revenue_report(open_store(cfg), month, what_if or [])
    if json:
        print_json(report)
        return
    _print_revenue(report)


def revenue_report_empty(month: str | None) -> dict[str, Any]:
    from insource.analytics.revenue import month_bounds

    label = month_bounds(month, None).label
    return {
        "month": label, "total_usd": 0.0, "tenants": [], "top1_share": 0.0, "top5_share": 0.0, "hhi": 0.0,
        "concentration": "unconcentrated", "what_if": [],
    }  # fmt: skip


REVENUE_COLUMNS = (
    Col("tenant", "id"),
    Col("revenue (USD)", "num", short="USD"),
    Col("share", "num"),
    Col("MoM", "num", drop=2),
    Col("major", drop=3),
    Col("extraction risk", short="risk"),
    Col("reasons", drop=1),
)


def _tenant_cells(t: dict[str, Any]) -> list[Cell]:
    growth = "-" if t["mom_growth"] is None else f"{100 * t['mom_growth']:+.1f}%"
    risk = t["extraction_risk"]
    return [
        literal(t["tenant"]),
        f"{t['revenue_usd']:.4f}",
        f"{100 * t['share']:.1f}%",
        growth,
        "yes" if t["major_customer"] else "",
        f"{risk['level']} ({risk['score']:.2f})",
        literal("; ".join(risk["reasons"]) or "-"),
    ]


def _print_revenue(report: dict[str, Any]) -> None:
    if not report["tenants"]:
        console.print(literal(f"{report['month']}: no usage recorded: serve traffic (or import a bill) first."))
        return
    print_table(REVENUE_COLUMNS, [_tenant_cells(t) for t in report["tenants"]])
    console.print(
        literal(
            f"{report['month']}: total {report['total_usd']:.4f} USD; top-1 {100 * report['top1_share']:.1f}%, "
            f"top-5 {100 * report['top5_share']:.1f}%; HHI {report['hhi']:.0f} ({report['concentration']})"
        )
    )
    for w in report["what_if"]:
        console.print(
            literal(
                f"what if {w['tenant']} {100 * w['change']:+.0f}%: total {w['total_usd']:.4f} USD "
                f"({100 * w['total_change_share']:+.1f}%)"
            )
        )
