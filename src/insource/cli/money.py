"""Money commands: forecast, savings, makebuy."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.table import Column, Table

from insource.cli import app
from insource.cli.common import (
    ConfigOpt,
    JsonOpt,
    console,
    err_console,
    finite,
    get_config,
    get_store,
    handle_errors,
    literal,
    parse_when,
    print_json,
)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


@app.command()
@handle_errors
def forecast(
    horizon_days: Annotated[int, typer.Option("--horizon-days", min=1, max=366, help="Days to forecast.")] = 30,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Forecast as if it were this date or time (default: now).")
    ] = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """This month's spend: month to date, run-rate, total with an 80% interval, days ahead, budgets' run-out days.

    Method: statsmodels ExponentialSmoothing (Holt-Winters, damped trend, weekly seasonality) from 14 days on.

    With 3 to 13 days of history a linear trend; with fewer, no forecast. Backtest error (MAPE): your own history.

    Needs the analytics extra: pip install 'insource\\[analytics]'. Method and figures: docs/economics.md.
    """
    from insource.service.money import forecast_report, has_usage

    cfg = get_config(config)
    store = get_store(cfg)
    report = forecast_report(cfg, store, horizon_days=horizon_days, now=parse_when(as_of, "--as-of"))
    note = _forecast_note(report, not has_usage(store))
    if json:
        print_json(report)
        if note:
            err_console.print(literal(note))
        return
    _print_forecast(report, note)


def _forecast_note(report: dict[str, Any], empty: bool) -> str | None:
    from insource.service.money import NO_USAGE

    if report["forecast_month_usd"]["p50"] is not None:
        return None
    if empty:
        return NO_USAGE
    days = len(report["daily"]) - 1
    return (
        f"not enough history to forecast: {days} complete day(s) recorded, 3 needed (14 for weekly seasonality). "
        "Month to date and run-rate are shown; come back in a few days, or import older bills with "
        "`insource usage import FILE --format csv`."
    )


def _print_forecast(report: dict[str, Any], note: str | None) -> None:
    month = report["forecast_month_usd"]
    console.print(f"[bold]{report['month']}[/] ({report['timezone']}, as of {report['as_of']})", highlight=False)
    console.print(f"month to date   {_money(report['month_to_date_usd'])}", highlight=False)
    console.print(f"run-rate        {_money(report['run_rate_usd_per_month'])} / month", highlight=False)
    if note:
        console.print(literal(note, style="yellow"))
        return
    console.print(
        f"month forecast  {_money(month['p50'])}  (80%: {_money(month['p10'])} – {_money(month['p90'])})",
        highlight=False,
    )
    mape = report["backtest_mape"]
    console.print(literal(f"method          {report['method']}"))
    console.print(f"backtest MAPE   {'-' if mape is None else f'{mape:.1%}'}", highlight=False)
    table = Table("date", "actual", "p10", "p50", "p90")
    for d in report["daily"]:
        table.add_row(d["date"], _money(d["actual_usd"]), _money(d["p10"]), _money(d["p50"]), _money(d["p90"]))
    console.print(table)
    if report["budgets"]:
        budgets = Table("scope", "name", "budget", "spent this month", "runs out")
        for b in report["budgets"]:
            budgets.add_row(
                b["scope"],
                literal(b["name"]),
                _money(b["budget_usd"]),
                _money(b["spent_usd"]),
                b["exhausted_on"] or "not in the horizon",
            )
        console.print(budgets)


@app.command()
@handle_errors
def savings(
    by: Annotated[
        str, typer.Option("--by", help="Rows per task, per day, or per source (student, cache, teacher, audit).")
    ] = "task",
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """What insourcing has saved: teacher cost avoided − student serving cost − audit cost, per task or day."""
    from insource.service.money import NO_USAGE, has_usage, savings_report

    cfg = get_config(config)
    store = get_store(cfg)
    report = savings_report(store, by=by)
    note = None
    if not report["rows"]:
        note = NO_USAGE if not has_usage(store) else "no request carries a task yet: nothing to insource."
    if json:
        print_json(report)
        if note:
            err_console.print(literal(note))
        return
    if note:
        console.print(literal(note, style="yellow"))
        return
    caption = "USD; net = teacher cost avoided (by students and the response cache) − student − audits"
    table = Table(
        "requests", "insourced", "share", "avoided", "student", "audits", "net", box=box.SIMPLE, caption=caption
    )
    table.columns.insert(0, Column(by, no_wrap=True))
    for row in [*report["rows"], {by: "total", **report["total"]}]:
        table.add_row(
            literal(row[by]),
            str(row["requests"]),
            str(row["insourced"]),
            f"{row['share_insourced']:.1%}",
            f"{row['teacher_cost_avoided_usd']:,.4f}",
            f"{row['student_cost_usd']:,.4f}",
            f"{row['audit_cost_usd']:,.4f}",
            f"{row['net_savings_usd']:,.4f}",
        )
    console.print(table)


@app.command()
@handle_errors
def makebuy(
    task: Annotated[str, typer.Option("--task", help="The task to price.")],
    gpu_usd_per_hour: Annotated[
        float | None,
        typer.Option("--gpu-usd-per-hour", callback=finite, help="Price a GPU instead of the CPU student."),
    ] = None,
    throughput_rps: Annotated[
        float | None, typer.Option("--throughput-rps", callback=finite, help="Requests per second one GPU serves.")
    ] = None,
    utilisation: Annotated[
        float | None,
        typer.Option("--utilisation", callback=finite, help="Useful share of paid time, (0, 1]; default 1."),
    ] = None,
    training_usd: Annotated[
        float | None,
        typer.Option("--training-usd", callback=finite, help="One-off training cost (default: the student's own)."),
    ] = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make or buy: the task's monthly API cost against serving it in house (its CPU student, or a GPU),
    monthly savings, break-even volume and payback days. Formulas: docs/economics.md."""
    from insource.service.money import makebuy_report

    cfg = get_config(config)
    report = makebuy_report(
        cfg,
        get_store(cfg),
        task,
        gpu_usd_per_hour=gpu_usd_per_hour,
        throughput_rps=throughput_rps,
        utilisation=utilisation,
        training_usd=training_usd,
    )
    if json:
        print_json(report)
        return
    table = Table("", "")
    for key, value in report.items():
        table.add_row(key, literal("-" if value is None else value))
    console.print(table)
