"""The dashboard's sections: each builds one panel (a table, and the chart drawn from the same rows) from one
store query or one analytics function."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson

from insource.config import Config
from insource.service.dashboard_types import Action, Chart, Column, Figure, Panel, Series
from insource.service.spend import month_start, month_to_date
from insource.store import Store
from insource.store import dashboard as q

TOP_SERIES = 8  # a chart draws the biggest groups; the rest is summed as "other" (the table has them all)
UNTAGGED = "(untagged)"
DIM_LABELS = {"model": "model", "task": "task", "tenant": "tenant"}


def cols(*specs: str) -> list[Column]:
    """Columns from "name" or "name:format" specs."""
    out = []
    for spec in specs:
        name, _, fmt = spec.partition(":")
        out.append(Column(name, fmt or "text"))  # type: ignore[arg-type]
    return out


def _day(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _time(ts: float | None) -> str | None:
    return None if not ts else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _label(value: Any, untagged: str = UNTAGGED) -> str:
    return untagged if value in (None, "") else str(value)


def stacked_by_day(
    rows: list[dict[str, Any]], value: str, kind: str = "stacked", y_title: str = "USD", percent: bool = False
) -> Chart:
    """One series per group (`grp`), one point per day; the smallest groups summed as "other"."""
    days = sorted({r["day"] for r in rows})
    totals: dict[str, float] = defaultdict(float)
    cells: dict[tuple[str, str], float] = defaultdict(float)
    for r in rows:
        totals[r["grp"]] += float(r[value] or 0)
    keep = set(sorted(totals, key=lambda g: (-totals[g], g))[:TOP_SERIES])
    for r in rows:
        cells[(r["grp"] if r["grp"] in keep else "other", r["day"])] += float(r[value] or 0)
    names = sorted(keep, key=lambda g: (-totals[g], g)) + (["other"] if len(totals) > len(keep) else [])
    series = [Series(name, days, [round(cells[(name, d)], 6) for d in days]) for name in names]
    return Chart(kind, series, y_title, percent=percent)  # type: ignore[arg-type]


def daily_spend(store: Store, dim: str, start: float, end: float) -> Panel:
    rows = q.daily_spend(store, dim, start, end)
    for r in rows:
        r["grp"] = _label(r["grp"], "(none)" if dim != "task" else UNTAGGED)
    label = DIM_LABELS[dim]
    return Panel(
        id=f"spend-by-{dim}",
        title=f"Spend per day by {label}",
        columns=cols("day:date", label, "cost_usd:usd", "requests:int"),
        rows=[[r["day"], r["grp"], float(r["cost_usd"] or 0), int(r["requests"] or 0)] for r in rows],
        empty="No spend in the last 90 days: send requests through `insource serve`.",
        chart=stacked_by_day(rows, "cost_usd") if rows else None,
        note="UTC days, last 90 days.",
    )


def forecast(cfg: Config, store: Store, now: float) -> Panel:
    return Panel(
        id="forecast",
        title="Forecast",
        columns=cols("date:date", "actual_usd:usd", "p10:usd", "p50:usd"),
        rows=[],
        empty="The spend forecast appears here once `insource forecast` is available and 3 days of history exist.",
    )


def budgets(cfg: Config, store: Store, now: float) -> Panel:
    from insource.service.keys import list_keys

    spent = month_to_date(store, now)
    rows: list[list[Any]] = []
    for name, tenant in sorted(cfg.tenants.items()):
        if tenant.budget_usd is not None:
            rows.append(_budget_row("tenant", name, tenant.budget_usd, spent.get(f"tenant:{name}", 0.0)))
    for key in list_keys(store):
        if key["budget_usd"] is not None and not key["revoked"]:
            rows.append(_budget_row("key", key["id"], key["budget_usd"], spent.get(f"key:{key['id']}", 0.0)))
    rows.sort(key=lambda r: -(r[4] or 0))
    labels = [f"{r[0]} {r[1]}" for r in rows]
    chart = (
        Chart("bar", [Series("share used", labels, [r[4] for r in rows])], "share of budget", percent=True)
        if rows
        else None
    )
    return Panel(
        id="budgets",
        title="Budgets this month",
        columns=cols("scope", "name", "budget_usd:usd", "spent_usd:usd", "share_used:share"),
        rows=rows,
        empty="No budgets set: `insource keys create --tenant T --budget-usd 100`, or [tenants.T] budget_usd.",
        chart=chart,
    )


def _budget_row(scope: str, name: str, budget: float, spent: float) -> list[Any]:
    return [scope, name, float(budget), float(spent), (spent / budget) if budget > 0 else None]


def task_table(cfg: Config, store: Store, start: float, end: float) -> Panel:
    from insource.service.routes import load_policies

    policies = load_policies(cfg, store)
    captured = {r["task"]: int(r["n"]) for r in q.captures_by_task(store)}
    rows = []
    for r in q.by_dimension(store, "task", start, end):
        task, requests = r["grp"], int(r["requests"] or 0)
        policy = policies.get(task) if task else None
        route = "-" if policy is None else (policy.mode if policy.active else f"{policy.mode} (off)")
        student = int(r["student_requests"] or 0)
        rows.append(
            [
                _label(task),
                requests,
                int(r["audits"] or 0),
                captured.get(task, 0),
                float(r["cost_usd"] or 0),
                float(r["cost_avoided_usd"] or 0),
                student / requests if requests else None,
                route,
            ]
        )
    series = [Series("cost_usd", [r[0] for r in rows], [r[4] for r in rows])]
    return Panel(
        id="tasks",
        title="Tasks, last 90 days",
        columns=cols(
            "task",
            "requests:int",
            "audits:int",
            "captured:int",
            "cost_usd:usd",
            "cost_avoided_usd:usd",
            "student_share:share",
            "route",
        ),
        rows=rows,
        empty="No tasks yet: tag requests with the `X-Insource-Task: NAME` header (or `insource tasks assign`).",
        chart=Chart("bar", series, "USD") if rows else None,
    )


def opportunities(cfg: Config, store: Store, now: float) -> Panel:
    return Panel(
        id="opportunities",
        title="What to insource next",
        columns=cols("template", "task", "requests:int", "monthly_spend_usd:usd"),
        rows=[],
        empty="Opportunities appear here once `insource opportunities` is available and traffic is captured.",
    )


def task_spend(store: Store, task: str, start: float, end: float) -> Panel:
    rows = [r for r in q.daily_spend(store, "task", start, end) if r["grp"] == task]
    for r in rows:
        r["grp"] = task
    return Panel(
        id="spend",
        title="Spend per day",
        columns=cols("day:date", "cost_usd:usd", "cost_avoided_usd:usd", "requests:int"),
        rows=[
            [r["day"], float(r["cost_usd"] or 0), float(r["cost_avoided_usd"] or 0), int(r["requests"])] for r in rows
        ],
        empty="No spend on this task in the last 90 days.",
        chart=stacked_by_day(rows, "cost_usd") if rows else None,
    )


def agreement(store: Store, start: float, task: str | None = None) -> Panel:
    rows = q.daily_agreement(store, start, task)
    for r in rows:
        r["grp"], r["rate"] = r["task"], (int(r["agree"] or 0) / int(r["n"])) if r["n"] else None
    return Panel(
        id="agreement",
        title="Student agreement with the teacher per day",
        columns=cols("day:date", "task", "compared:int", "agreed:int", "agreement:share"),
        rows=[[r["day"], r["task"], int(r["n"]), int(r["agree"] or 0), r["rate"]] for r in rows],
        empty="No comparisons yet: a route in shadow mode, or with audit_rate > 0, records them.",
        chart=stacked_by_day(rows, "rate", "line", "agreement", percent=True) if rows else None,
        note="From audits (a sample of student answers re-asked to the teacher) and shadow runs.",
    )


def audits(store: Store, start: float, task: str | None = None) -> Panel:
    rows = q.daily_audits(store, start, task)
    for r in rows:
        r["grp"] = _label(r["task"])
    return Panel(
        id="audits",
        title="Teacher audits per day",
        columns=cols("day:date", "task", "audits:int", "cost_usd:usd"),
        rows=[[r["day"], r["grp"], int(r["audits"]), float(r["cost_usd"] or 0)] for r in rows],
        empty="No audits yet: a route with audit_rate > 0 re-asks the teacher for a sample of student answers.",
        chart=stacked_by_day(rows, "audits", "stacked", "audits") if rows else None,
    )


def _event_rows(events: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for e in events:
        try:
            detail = orjson.loads(e["detail"])
        except orjson.JSONDecodeError:
            detail = {}
        detail = detail if isinstance(detail, dict) else {}
        rows.append([_time(e["ts"]), e["task"], e["kind"], detail.get("model"), detail.get("agreement")])
        rows[-1].append(detail.get("floor"))
    return rows


def route_history(store: Store, task: str) -> Panel:
    return Panel(
        id="route-events",
        title="Route history",
        columns=cols("time:time", "task", "event", "model", "agreement:share", "floor:share"),
        rows=_event_rows(q.route_events(store, task=task)),
        empty="No route events: `insource route set --task TASK ...` routes a task to a student.",
    )


def rollbacks(store: Store) -> Panel:
    return Panel(
        id="rollbacks",
        title="Rollbacks and routes turned off",
        columns=cols("time:time", "task", "event", "model", "agreement:share", "floor:share"),
        rows=_event_rows([e for e in q.route_events(store) if e["kind"] != "set"]),
        empty="No rollback: every route has kept its agreement above its floor.",
    )


def route_table(cfg: Config, store: Store) -> Panel:
    from insource.service.routes import show_routes

    rows, actions = [], []
    for r in show_routes(cfg, store):
        rows.append(
            [r["task"], r["model"], r["mode"], r["agreement"], r["n"], r["floor"], "on" if r["active"] else "off"]
        )
        off = Action("Turn off", f"/ui/routes/{r['task']}/off", f"Send all of {r['task']} back to the teacher?")
        actions.append(off if r["active"] else None)
    return Panel(
        id="routes",
        title="Routes",
        columns=cols("task", "model", "mode", "agreement:share", "compared:int", "floor:share", "state"),
        rows=rows,
        empty="No route yet: distill a student (`insource distill`), then `insource route set --task TASK ...`.",
        actions=actions,
    )


def students(cfg: Config) -> Panel:
    from insource.distill.registry import list_models

    rows = []
    for m in list_models(cfg.registry_path()):
        metrics = m.get("metrics") or {}
        accuracy = metrics.get("test_accuracy", metrics.get("accuracy"))
        rows.append([m["name"], m["task"], m.get("student"), m["status"], _time(m.get("created_at")), accuracy])
    return Panel(
        id="students",
        title="Students in the registry",
        columns=cols("model", "task", "kind", "status", "created:time", "accuracy:share"),
        rows=rows,
        empty="No student yet: `insource dataset build --task T --out DIR`, then `insource distill --task T`.",
    )


def savings(cfg: Config, store: Store, now: float) -> Panel:
    return Panel(
        id="savings",
        title="Savings",
        columns=cols("task", "net_savings_usd:usd"),
        rows=[],
        empty="Savings per task appear here once `insource savings` is available.",
    )


def tenant_table(cfg: Config, store: Store, now: float) -> Panel:
    start = month_start(now)
    rows = []
    for r in q.by_dimension(store, "tenant", start, now + 1):
        budget = cfg.tenants[r["grp"]].budget_usd if r["grp"] in cfg.tenants else None
        cost = float(r["cost_usd"] or 0)
        rows.append([r["grp"], int(r["requests"] or 0), cost, float(r["cost_avoided_usd"] or 0), budget])
        rows[-1].append(cost / budget if budget else None)
    return Panel(
        id="tenants",
        title="Tenants this month",
        columns=cols(
            "tenant", "requests:int", "cost_usd:usd", "cost_avoided_usd:usd", "budget_usd:usd", "share_used:share"
        ),
        rows=rows,
        empty="No spend this month yet.",
        chart=Chart("bar", [Series("cost_usd", [r[0] for r in rows], [r[2] for r in rows])], "USD") if rows else None,
    )


def key_table(store: Store, now: float) -> Panel:
    from insource.service.keys import list_keys

    spent = {r["key_id"]: r for r in q.spend_per_key(store, month_start(now))}
    rows = []
    for k in list_keys(store):  # ids and prefixes only: the key itself is never stored, its hash never shown
        s = spent.get(k["id"], {})
        rows.append([k["id"], f"{k['prefix']}…", k["tenant"], k["budget_usd"], float(s.get("cost_usd") or 0)])
        rows[-1] += [k["rpm"], k["tpm"], "revoked" if k["revoked"] else "active", _time(s.get("last_ts"))]
    return Panel(
        id="keys",
        title="Keys",
        columns=cols(
            "id",
            "prefix",
            "tenant",
            "budget_usd:usd",
            "spent_this_month_usd:usd",
            "rpm:int",
            "tpm:int",
            "state",
            "last_used:time",
        ),
        rows=rows,
        empty="No keys yet: `insource keys create --tenant NAME`.",
    )


def revenue(cfg: Config, store: Store, now: float) -> tuple[list[Figure], list[Panel]]:
    start = month_start(now)
    rows = [r for r in q.by_dimension(store, "tenant", start, now + 1) if float(r["cost_usd"] or 0) > 0]
    total = sum(float(r["cost_usd"]) for r in rows)
    table = [[r["grp"], float(r["cost_usd"]), float(r["cost_usd"]) / total] for r in rows] if total else []
    hhi = sum((row[2] * 100) ** 2 for row in table)
    figures = [
        Figure("Revenue this month", total, "usd"),
        Figure("Top tenant's share", table[0][2] if table else None, "share"),
        Figure("Herfindahl-Hirschman index", round(hhi) if table else None, "int", "above 1,800: highly concentrated"),
    ]
    panel = Panel(
        id="revenue",
        title="Revenue per tenant this month",
        columns=cols("tenant", "revenue_usd:usd", "share:share"),
        rows=table,
        empty="No revenue this month yet.",
        chart=Chart("bar", [Series("revenue_usd", [r[0] for r in table], [r[1] for r in table])], "USD")
        if table
        else None,
    )
    return figures, [panel]
