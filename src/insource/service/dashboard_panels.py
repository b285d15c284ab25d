"""The dashboard's sections: each builds one panel (a table, and the chart drawn from the same rows) from one
store query or one analytics function."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from insource.config import Config
from insource.service.dashboard_types import Action, Chart, Column, Panel, Series
from insource.service.spend import month_to_date
from insource.store import Store
from insource.store import dashboard as q
from insource.store import usage_queries as uq
from insource.store.usage_queries import UsageFilter

HISTORY_DAYS = 90
TOP_SERIES = 8  # a chart draws the biggest groups; the rest is summed as "other" (the table has them all)
UNTAGGED = "(untagged)"
DIM_LABELS = {"model": "model", "task": "task", "tenant": "tenant"}


@dataclass(frozen=True)
class Span:
    """What a page covers, in the reporting timezone (`[report] timezone`): the last 90 local days, this month."""

    zone: str
    now: float
    today: dt.date
    since: dt.date  # the first of the last HISTORY_DAYS days
    month_first: dt.date
    patience_s: float | None = None  # how long a page waits for a costly analysis (None: until it is done)

    @classmethod
    def of(cls, store: Store, now: float | None = None, patience_s: float | None = None) -> Span:
        now = time.time() if now is None else now
        today = uq.today(store, now)
        since = today - dt.timedelta(days=HISTORY_DAYS - 1)
        return cls(store.report_timezone(), now, today, since, today.replace(day=1), patience_s)

    @property
    def since_ts(self) -> float:
        return dt.datetime.combine(self.since, dt.time(), ZoneInfo(self.zone)).timestamp()

    def local_day(self, ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, ZoneInfo(self.zone)).strftime("%Y-%m-%d")

    @property
    def as_of(self) -> str:
        return dt.datetime.fromtimestamp(self.now, ZoneInfo(self.zone)).strftime(f"%Y-%m-%d %H:%M {self.zone}")


def cols(*specs: str) -> list[Column]:
    """Columns from "name" or "name:format" specs."""
    out = []
    for spec in specs:
        name, _, fmt = spec.partition(":")
        out.append(Column(name, fmt or "text"))  # type: ignore[arg-type]
    return out


def _time(ts: float | None) -> str | None:
    return None if not ts else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


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


def daily_spend(store: Store, dims: tuple[str, ...], span: Span) -> list[Panel]:
    """Spend per day by each of `dims` (one panel each), from one read of the last 90 days' rollups."""
    found = uq.usage_by(store, ["day", *dims], UsageFilter(since=span.since))
    panels = []
    for dim in dims:
        cells: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for r in found:
            cell = cells[(r.keys["day"], _label(r.keys[dim], UNTAGGED if dim == "task" else "(none)"))]
            cell[0] += r.cost_usd
            cell[1] += r.requests
        rows = [{"day": d, "grp": g, "cost_usd": c, "requests": int(n)} for (d, g), (c, n) in sorted(cells.items())]
        label = DIM_LABELS[dim]
        panels.append(
            Panel(
                id=f"spend-by-{dim}",
                title=f"Spend per day by {label}",
                columns=cols("day:date", label, "cost_usd:usd", "requests:int"),
                rows=[[r["day"], r["grp"], r["cost_usd"], r["requests"]] for r in rows],
                empty="No spend in the last 90 days: send requests through `insource serve`.",
                chart=stacked_by_day(rows, "cost_usd") if rows else None,
                note=f"Last 90 days, days in {span.zone}.",
            )
        )
    return panels


def budgets(
    cfg: Config, store: Store, span: Span, exhausted_on: dict[tuple[str, str], str | None] | None = None
) -> Panel:
    """Budgets this month: spent, share used and, with a forecast, the day each one runs out."""
    from insource.service.keys import list_keys

    spent = _budget_spend(store, span)
    rows: list[list[Any]] = []
    for name, tenant in sorted(cfg.tenants.items()):
        if tenant.budget_usd is not None:
            rows.append(_budget_row("tenant", name, tenant.budget_usd, spent.get(f"tenant:{name}", 0.0)))
    for key in list_keys(store):
        if key["budget_usd"] is not None and not key["revoked"]:
            rows.append(_budget_row("key", key["id"], key["budget_usd"], spent.get(f"key:{key['id']}", 0.0)))
    rows.sort(key=lambda r: -(r[4] or 0))
    for row in rows:
        row.append((exhausted_on or {}).get((row[0], row[1])))
    labels = [f"{r[0]} {r[1]}" for r in rows]
    chart = Chart("bar", [Series("share used", labels, [r[4] for r in rows])], "share of budget", percent=True)
    return Panel(
        id="budgets",
        title="Budgets this month",
        columns=cols("scope", "name", "budget_usd:usd", "spent_usd:usd", "share_used:share", "runs_out_on:date"),
        rows=rows,
        empty="No budgets set: `insource keys create --tenant T --budget-usd 100`, or [tenants.T] budget_usd.",
        chart=chart if rows else None,
        note="Budgets run by UTC calendar month, as the gateway enforces them. runs_out_on: from the forecast.",
    )


def _budget_spend(store: Store, span: Span) -> dict[str, float]:
    """This UTC month's spend per budget scope ("key:ID", "tenant:NAME"), as the gateway enforces budgets: from
    the daily rollups when they are UTC days, else from the records."""
    if span.zone != "UTC":
        return month_to_date(store, span.now)
    flt = UsageFilter(since=span.month_first)
    out = {f"key:{r.keys['key']}": r.cost_usd for r in uq.usage_by(store, ["key"], flt)}
    out.update({f"tenant:{r.keys['tenant']}": r.cost_usd for r in uq.usage_by(store, ["tenant"], flt)})
    return out


def _budget_row(scope: str, name: str, budget: float, spent: float) -> list[Any]:
    return [scope, name, float(budget), float(spent), (spent / budget) if budget > 0 else None]


def task_table(cfg: Config, store: Store, span: Span) -> Panel:
    from insource.service.routes import load_policies

    policies = load_policies(cfg, store)
    captured = {r["task"]: int(r["n"]) for r in q.captures_by_task(store)}
    per_task: dict[str | None, dict[str, Any]] = {}
    for r in uq.usage_by(store, ["task", "provider"], UsageFilter(since=span.since)):
        t = per_task.setdefault(r.keys["task"], defaultdict(float))
        for name in ("requests", "audits", "cost_usd", "cost_avoided_usd"):
            t[name] += getattr(r, name)
        if r.keys["provider"] == uq.STUDENT_PROVIDER:
            t["student"] += r.requests
    rows = []
    for task, t in sorted(per_task.items(), key=lambda kv: (-kv[1]["cost_usd"], str(kv[0]))):
        policy = policies.get(task) if task else None
        route = "-" if policy is None else (policy.mode if policy.active else f"{policy.mode} (off)")
        requests = int(t["requests"])
        rows.append(
            [
                _label(task),
                requests,
                int(t["audits"]),
                captured.get(task, 0),
                t["cost_usd"],
                t["cost_avoided_usd"],
                t["student"] / requests if requests else None,
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


def task_spend(store: Store, task: str, span: Span) -> Panel:
    rows = [
        {"day": r.keys["day"], "grp": task, "cost_usd": r.cost_usd}
        | {"cost_avoided_usd": r.cost_avoided_usd, "requests": r.requests}
        for r in uq.daily_spend(store, UsageFilter(since=span.since, task=task))
    ]
    return Panel(
        id="spend",
        title="Spend per day",
        columns=cols("day:date", "cost_usd:usd", "cost_avoided_usd:usd", "requests:int"),
        rows=[[r["day"], r["cost_usd"], r["cost_avoided_usd"], r["requests"]] for r in rows],
        empty="No spend on this task in the last 90 days.",
        chart=stacked_by_day(rows, "cost_usd") if rows else None,
        note=f"Days in {span.zone}.",
    )


def agreement(store: Store, span: Span, task: str | None = None) -> Panel:
    days: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for b in q.agreement_buckets(store, span.since_ts, task):
        cell = days[(span.local_day(float(b["bucket"]) * q.BUCKET_S), b["task"])]
        cell[0] += int(b["n"])
        cell[1] += int(b["agree"] or 0)
    rows = [
        {"day": day, "grp": t, "n": n, "agree": ok, "rate": ok / n if n else None}
        for (day, t), (n, ok) in sorted(days.items())
    ]
    return Panel(
        id="agreement",
        title="Student agreement with the teacher per day",
        columns=cols("day:date", "task", "compared:int", "agreed:int", "agreement:share"),
        rows=[[r["day"], r["grp"], r["n"], r["agree"], r["rate"]] for r in rows],
        empty="No comparisons yet: a route in shadow mode, or with audit_rate > 0, records them.",
        chart=stacked_by_day(rows, "rate", "line", "agreement", percent=True) if rows else None,
        note="From audits (a sample of student answers re-asked to the teacher) and shadow runs.",
    )


def audits(store: Store, span: Span, task: str | None = None) -> Panel:
    flt = UsageFilter(since=span.since, endpoint="audit", task=task)
    rows = [
        {"day": r.keys["day"], "grp": _label(r.keys["task"]), "audits": r.audits, "cost_usd": r.cost_usd}
        for r in uq.daily_spend(store, flt, by="task")
    ]
    return Panel(
        id="audits",
        title="Teacher audits per day",
        columns=cols("day:date", "task", "audits:int", "cost_usd:usd"),
        rows=[[r["day"], r["grp"], r["audits"], r["cost_usd"]] for r in rows],
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
        rows[-1] += [detail.get("floor"), detail.get("by"), detail.get("reason")]
    return rows


def route_history(store: Store, task: str) -> Panel:
    return Panel(
        id="route-events",
        title="Route history",
        columns=cols("time:time", "task", "event", "model", "agreement:share", "floor:share", "by", "reason"),
        rows=_event_rows(q.route_events(store, task=task)),
        empty="No route events: `insource route set --task TASK ...` routes a task to a student.",
    )


def rollbacks(store: Store) -> Panel:
    return Panel(
        id="rollbacks",
        title="Rollbacks and routes turned off",
        columns=cols("time:time", "task", "event", "model", "agreement:share", "floor:share", "by", "reason"),
        rows=_event_rows([e for e in q.route_events(store) if e["kind"] != "set"]),
        empty="No rollback: every route has kept its agreement above its floor.",
    )


def route_table(cfg: Config, store: Store) -> Panel:
    from insource.service.routes import show_routes

    rows, actions = [], []
    for r in show_routes(cfg, store):
        rows.append([r["task"], r["model"], r["mode"], r["agreement"], r["n"], r["floor"], r["state"]])
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
    from insource.registry.entries import list_models

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


def tenant_table(cfg: Config, store: Store, span: Span) -> Panel:
    rows = []
    for r in uq.usage_by(store, ["tenant"], UsageFilter(since=span.month_first)):
        tenant = r.keys["tenant"]
        budget = cfg.tenants[tenant].budget_usd if tenant in cfg.tenants else None
        rows.append(
            [tenant, r.requests, r.cost_usd, r.cost_avoided_usd, budget, r.cost_usd / budget if budget else None]
        )
    return Panel(
        id="tenants",
        title="Tenants this month",
        columns=cols("tenant", "requests:int", "cost_usd:usd", "cost_avoided_usd:usd", "budget_usd:usd")
        + cols("share_used:share"),
        rows=rows,
        empty="No spend this month yet.",
        chart=Chart("bar", [Series("cost_usd", [r[0] for r in rows], [r[2] for r in rows])], "USD") if rows else None,
    )


def key_table(store: Store, span: Span) -> Panel:
    from insource.service.keys import list_keys

    spent = {r.keys["key"]: r for r in uq.usage_by(store, ["key"], UsageFilter(since=span.month_first))}
    rows = []
    for k in list_keys(store):  # ids and prefixes only: the key itself is never stored, its hash never shown
        s = spent.get(k["id"])
        rows.append([k["id"], f"{k['prefix']}…", k["tenant"], k["budget_usd"], s.cost_usd if s else 0.0])
        rows[-1] += [s.requests if s else 0, k["rpm"], k["tpm"], "revoked" if k["revoked"] else "active"]
    return Panel(
        id="keys",
        title="Keys",
        columns=cols("id", "prefix", "tenant", "budget_usd:usd", "spent_this_month_usd:usd", "requests_this_month:int")
        + cols("rpm:int", "tpm:int", "state"),
        rows=rows,
        empty="No keys yet: `insource keys create --tenant NAME`.",
    )
