"""Routing commands: move a task from the rented teacher to the owned student, step by step."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from insource.cli import app
from insource.cli.common import (
    ConfigOpt,
    JsonOpt,
    console,
    finite,
    get_config,
    get_store,
    handle_errors,
    literal,
    print_json,
    shown,
)

route_app = typer.Typer(help="Per-task insourcing policies (shadow, canary, cascade, full).", no_args_is_help=True)
app.add_typer(route_app, name="route")


@route_app.command("set")
@handle_errors
def route_set(
    task: Annotated[str, typer.Option(help="The task to route.")],
    model: Annotated[str, typer.Option(help="The student, NAME@vN.")],
    mode: Annotated[str, typer.Option(help="shadow, canary, cascade or full.")],
    percent: Annotated[
        float,
        typer.Option(callback=finite, help="canary (required there, only there): share the student answers (0-100]."),
    ] = 0.0,
    threshold: Annotated[
        float | None,
        typer.Option(callback=finite, help="cascade only: confidence the student needs (0-1); or --target-agreement."),
    ] = None,
    target_agreement: Annotated[
        float | None,
        typer.Option(
            "--target-agreement",
            callback=finite,
            help="cascade only: use the threshold `insource eval` found for this.",
        ),
    ] = None,
    audit_rate: Annotated[
        float,
        typer.Option(
            "--audit-rate", callback=finite, help="canary, cascade, full: share of student answers audited (0-1)."
        ),
    ] = 0.0,
    floor: Annotated[
        float, typer.Option(callback=finite, help="Roll back when the agreement with the teacher is below this (0-1).")
    ] = 0.9,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Set a task's routing policy; running workers apply it within a second."""
    from insource.routing.policy import RoutePolicy
    from insource.service.routes import set_route, show_routes

    cfg = get_config(config)
    store = get_store(cfg, create=True)
    policy = RoutePolicy(task, model, mode, percent, threshold, target_agreement, audit_rate, floor)  # type: ignore[arg-type]
    set_route(cfg, store, policy)
    row = next(r for r in show_routes(cfg, store) if r["task"] == task)
    if json:
        print_json(row)
    else:
        console.print(
            f"task [bold]{shown(task)}[/] → {shown(row['model'])} in [bold]{shown(mode)}[/] mode", highlight=False
        )


@route_app.command("show")
@handle_errors
def route_show(config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Policies, live agreement with the teacher, and events (rollbacks included)."""
    from insource.service.routes import show_routes

    cfg = get_config(config)
    rows = show_routes(cfg, get_store(cfg))
    if json:
        print_json(rows)
        return
    table = Table(
        "task", "model", "mode", "active", "threshold", "percent", "audit", "floor", "agreement", "n", "last event"
    )
    for r in rows:
        agreement = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        last = r["events"][-1] if r["events"] else None
        table.add_row(
            literal(r["task"]),
            literal(r["model"]),
            literal(r["mode"]),
            "yes" if r["active"] else "[red]rolled back[/]",
            "-" if r["threshold"] is None else f"{r['threshold']:.3f}",
            f"{r['percent']:g}",
            f"{r['audit_rate']:g}",
            f"{r['floor']:g}",
            agreement,
            str(r["n"]),
            literal(last["kind"] if last else ""),
        )
    console.print(table)
    for r in rows:
        if r.get("problem"):
            console.print(literal(r["problem"], style="red"), literal(f"(the teacher answers {r['task']})"))
