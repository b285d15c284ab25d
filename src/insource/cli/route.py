"""Routing commands: move a task from the rented teacher to the owned student, step by step."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Annotated, Any

import typer

from insource.cli import app
from insource.cli.common import (
    ConfigOpt,
    JsonOpt,
    UrlOpt,
    console,
    finite,
    get_config,
    get_store,
    handle_errors,
    literal,
    print_json,
    shown,
)
from insource.cli.tables import Cell, Col, CsvOpt, emit, print_table

STATES = {"answering": "answering", "calibrating": "calibrating", "off": "off", "rolled_back": "rolled back"}

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
            help="cascade only: promise this agreement (the threshold `insource eval` found, then live traffic's).",
        ),
    ] = None,
    audit_rate: Annotated[
        float | None,
        typer.Option(
            "--audit-rate",
            callback=finite,
            help="canary, cascade, full: share of student answers audited (0-1); 0.02 for a cascade with a target.",
        ),
    ] = None,
    calibrate: Annotated[
        int | None,
        typer.Option(
            help="cascade with a target: live requests the student predicts on (the teacher answers) before the "
            "threshold is chosen on them; default enough for the target, 0 answers at once with the eval's."
        ),
    ] = None,
    floor: Annotated[
        float, typer.Option(callback=finite, help="Roll back when the agreement with the teacher is below this (0-1).")
    ] = 0.9,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Set a task's routing policy; running workers apply it within a second."""
    from insource.routing.policy import RoutePolicy
    from insource.service.promise import with_defaults
    from insource.service.routes import set_route, show_routes

    cfg = get_config(config)
    store = get_store(cfg, create=True)
    policy = RoutePolicy(task, model, mode, percent, threshold, target_agreement, 0.0, floor)  # type: ignore[arg-type]
    set_route(cfg, store, with_defaults(policy, audit_rate, calibrate, cli=True))
    row = next(r for r in show_routes(cfg, store) if r["task"] == task)
    if json:
        print_json(row)
    else:
        console.print(
            f"task [bold]{shown(task)}[/] → {shown(row['model'])} in [bold]{shown(mode)}[/] mode", highlight=False
        )
        if row["target_agreement"] is not None and row["mode"] == "cascade":
            console.print(literal(_promise_line(row)))  # calibrating, or unaudited


def _why_not_answering(row: dict[str, Any]) -> str:
    """One line: since when the teacher answers the task, and why (the latest off or rollback event)."""
    event = next((e for e in reversed(row["events"]) if e["kind"] in ("off", "rollback")), None)
    if event is None:
        return f"{row['task']}: the teacher answers it"
    when = dt.datetime.fromtimestamp(float(event["ts"]), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    detail = event["detail"] if isinstance(event["detail"], dict) else {}
    if event["kind"] == "rollback":
        floor = f"agreement {detail.get('agreement', 0):.3f} below the floor {detail.get('floor')}"
        why = detail.get("reason") or floor
        return f"{row['task']}: rolled back to the teacher at {when} ({why})"
    reason = detail.get("reason") or "no reason given"
    return f"{row['task']}: turned off by hand at {when} by {detail.get('by', 'cli')}: {reason}"


@route_app.command("off")
@handle_errors
def route_off(
    task: Annotated[str, typer.Option(help="The task to send back to the teacher.")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in the route's history).")] = None,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send a task back to the teacher now, on every worker within a second; `route set` turns it on again."""
    if url:
        from insource.cli.gateway import remote

        path = "/admin/routes/" + urllib.parse.quote(task, safe="") + "/off"
        row = remote(url, "POST", path, {"reason": reason} if reason is not None else {})
    else:
        from insource.service.routes import route_off as turn_off

        cfg = get_config(config)
        store = get_store(cfg, create=bool(cfg.routes))  # a config route's off must outlive this command
        row = turn_off(cfg, store, task, reason, by="cli")
    if json:
        print_json(row)
    else:
        console.print(f"task [bold]{shown(task)}[/] is off: the teacher answers it", highlight=False)


@route_app.command("show")
@handle_errors
def route_show(config: ConfigOpt = None, json: JsonOpt = False, csv: CsvOpt = False) -> None:
    """Policies, live agreement with the teacher, and events (rollbacks included)."""
    from insource.service.routes import show_routes

    cfg = get_config(config)
    rows = show_routes(cfg, get_store(cfg))
    empty = (
        "No routes yet (the teacher answers every task): run `insource route set --task T --model T@v1 --mode shadow`"
    )
    if emit(rows, json=json, csv=csv, empty=empty):
        return
    print_table(ROUTE_COLUMNS, [_route_cells(r) for r in rows])
    for r in rows:
        if r.get("problem"):
            console.print(literal(r["problem"], style="red"), literal(f"(the teacher answers {r['task']})"))
        elif r["state"] in ("off", "rolled_back"):
            console.print(literal(_why_not_answering(r)), soft_wrap=True)
        if r.get("target_agreement") is not None and r["mode"] == "cascade":
            console.print(literal(_promise_line(r)))  # wrapped to the terminal


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _promise_line(r: dict[str, Any]) -> str:
    """One line: a promised cascade's target, what it delivers (with its interval), and its threshold's story."""
    head = f"{r['task']}: promises {r['target_agreement']:g} agreement"
    if r["state"] == "calibrating":
        done = f"{r['calibrated']} of {r['calibrate']} requests"
        if r["calibrated"] >= r["calibrate"]:
            done += f", no threshold reaches {r['target_agreement']:g} on them yet"
        return f"{head}; calibrating on live traffic ({done}): the teacher answers"
    live = "no audits yet"
    if r["live_agreement"] is not None:
        live = f"live {r['live_agreement']:.3f} (≥ {r['live_agreement_low']:.3f}, n={r['n']})"
    if not r["audited"]:
        live = "unaudited (--audit-rate 0): nothing checks it"
    steps = ", ".join(
        f"{'-' if t['threshold'] is None else format(t['threshold'], '.3f')} {t['reason']}" for t in r["thresholds"]
    )
    return f"{head}; {live}; coverage {_share(r['coverage'])}; thresholds: {steps}"


ROUTE_COLUMNS = (
    Col("task"),
    Col("model"),
    Col("mode"),
    Col("state"),
    Col("threshold", "num", short="thr."),
    Col("percent", "num", short="%", drop=4),
    Col("audit", "num", drop=3),
    Col("floor", "num", drop=2),
    Col("agreement", "num", short="agr."),
    Col("n", "num"),
    Col("last event", short="event", drop=1),
)


def _route_cells(r: dict[str, Any]) -> list[Cell]:
    last = r["events"][-1] if r["events"] else None
    return [
        literal(r["task"]),
        literal(r["model"]),
        literal(r["mode"]),
        literal(STATES.get(r["state"], r["state"]), style="" if r["state"] == "answering" else "red"),
        "-" if r["threshold"] is None else f"{r['threshold']:.3f}",
        f"{r['percent']:g}",
        f"{r['audit_rate']:g}",
        f"{r['floor']:g}",
        "-" if r["agreement"] is None else f"{r['agreement']:.3f}",
        str(r["n"]),
        literal(last["kind"] if last else ""),
    ]
