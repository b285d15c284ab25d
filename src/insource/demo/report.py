"""The demo's tables: spend so far, the student's evaluation, and the before/after summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from insource.cli.common import literal
from insource.cli.tables import Cell, Col, fit_table
from insource.config import Config
from insource.demo.workload import PhaseResult
from insource.service.routes import show_routes
from insource.store import Store, usage_queries


def _phase_spend(store: Store, task: str, start: float, end: float) -> dict[str, float]:
    return usage_queries.window_spend(store, task, start, end)


def wait_for_records(store: Store, start: float, end: float, expected: int, timeout: float = 5.0) -> None:
    """Usage records are written by a background writer: wait (briefly) until a phase's are all visible."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if usage_queries.window_count(store, start, end) >= expected:
            return
        time.sleep(0.1)


def print_spend(console: Console, store: Store, start: float, end: float) -> None:
    rows = usage_queries.window_by_task(store, start, end)
    cols = (
        Col("task"),
        Col("requests", "num", short="reqs"),
        Col("prompt tokens", "num", short="prompt"),
        Col("completion tokens", "num", short="compl."),
        Col("spend (USD)", "num", short="USD"),
    )
    cells: list[list[Cell]] = [
        [literal(r["task"]), str(r["n"]), str(r["p"]), str(r["c"]), f"${r['cost']:.4f}"] for r in rows
    ]
    console.print(fit_table(cols, cells, width=console.width, title="Spend so far"))


_EVAL_KEYS = (
    "n",
    "agreement",
    "ece",
    "target_agreement",
    "threshold",
    "coverage_at_threshold",
    "agreement_at_threshold",
    "latency_ms_p50",
    "cost_per_1k_usd",
    "teacher_cost_per_1k_usd",
)


def print_eval(console: Console, ev: dict[str, Any]) -> None:
    rows: list[list[Cell]] = []
    for name in _EVAL_KEYS:
        value = ev.get(name)
        rows.append([name, f"{value:.4f}" if isinstance(value, float) else str(value)])
    title = literal(f"Evaluation of {ev.get('model')} on the {ev.get('split')} split")
    console.print(fit_table((Col("metric", "id"), Col("value", "num")), rows, width=console.width, title=title))


def _agreement(result: PhaseResult, teacher: Any) -> float | None:
    if teacher is None or not result.answers:
        return None
    return sum(answer == teacher.gold(text) for text, answer, _ in result.answers) / len(result.answers)


def summarise(
    store: Store,
    cfg: Config,
    task: str,
    before_span: tuple[float, float],
    after_span: tuple[float, float],
    before: PhaseResult,
    after: PhaseResult,
    teacher: Any,
    monthly: int,
) -> dict[str, Any]:
    store.close()
    spend_before = _phase_spend(store, task, *before_span)
    spend_after = _phase_spend(store, task, *after_span)
    per_req_before = spend_before["cost_usd"] / max(1, before.requests)
    per_req_after = spend_after["cost_usd"] / max(1, after.requests)
    live = next((r for r in show_routes(cfg, store) if r["task"] == task), None)
    return {
        "before": {
            "requests": before.requests,
            "insourced": before.insourced,
            "failed": before.failed,
            "agreement": _agreement(before, teacher),
            **spend_before,
        },
        "after": {
            "requests": after.requests,
            "insourced": after.insourced,
            "failed": after.failed,
            "agreement": _agreement(after, teacher),
            **spend_after,
        },
        "insourced_share": after.insourced / max(1, after.ok),
        "audited_agreement": live["agreement"] if live else None,
        "audits": live["n"] if live else 0,
        "rolled_back": bool(live and not live["active"]),
        "monthly_requests": monthly,
        "monthly_cost_before_usd": per_req_before * monthly,
        "monthly_cost_after_usd": per_req_after * monthly,
        "projected_monthly_savings_usd": (per_req_before - per_req_after) * monthly,
    }


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole > 0 else "n/a"


PHASE_COLUMNS = (  # a demo phase's table: before (the teacher answers all) and after (cascade)
    Col("phase"),
    Col("requests", "num", short="reqs"),
    Col("insourced", "num"),
    Col("agreement", "num", short="agr."),
    Col("spend", "num"),
    Col("avoided", "num"),
)
_FINAL_COLUMNS = (*PHASE_COLUMNS, Col("per month", "num", short="month"))


def print_final(console: Console, s: dict[str, Any], config: Path) -> None:
    monthly = f"{s['monthly_requests']:,} requests/month"
    caption = (
        "before: the teacher answers all; after: cascade. agreement: with the teacher's labels; "
        f"avoided: teacher cost not paid; per month: projected at {monthly}"
    )
    rows: list[list[Cell]] = []
    for name, key in (("before", "before"), ("after", "after")):
        p = s[key]
        rows.append(
            [
                name,
                str(p["requests"]),
                f"{p['insourced']} ({p['insourced'] / max(1, p['requests']):.0%})",
                pct(p["agreement"]),
                f"${p['cost_usd']:.4f}",
                f"${p['avoided_usd']:.4f}",
                f"${s[f'monthly_cost_{key}_usd']:,.0f}",
            ]
        )
    saved, before = s["projected_monthly_savings_usd"], s["monthly_cost_before_usd"]
    rows.append(["savings", "", "", "", "", "", Text(f"${saved:,.0f}", style="bold green")])
    title = "Before / after insourcing"
    console.print(fit_table(_FINAL_COLUMNS, rows, width=console.width, title=title, caption=caption))
    console.print(
        f"Projected monthly savings at {monthly}: [bold green]${saved:,.0f}[/] ({_share(saved, before)} of "
        f"${before:,.0f}); audited live agreement {pct(s['audited_agreement'])} over {s['audits']} audits.",
        highlight=False,
    )
    if s["rolled_back"]:
        console.print("[red]The audits' agreement fell below the floor: the task rolled back to the teacher.[/]")
    if s["simulated_teacher"]:
        console.print(
            "[yellow]The teacher was SIMULATED (no real LLM was called).[/] Like a real one it makes "
            "mistakes (wrong labels, ambiguous messages read two ways), so even its own answers agree "
            "with its labels only ~97-98% of the time."
        )
    console.print(
        f"Everything stays in {s['folder']}. Inspect it with:\n"
        f"  insource spend --by task --config {config}\n  insource models list --config {config}\n"
        f"  insource route show --config {config}\n"
        f"  insource ui --config {config}   (the dashboard, on 127.0.0.1: open the link it prints)\n"
        f"The overview as one HTML file: {s.get('report', '')}",
        highlight=False,
    )


def write_overview(cfg: Config, store: Store, path: Path) -> Path:
    """The dashboard's overview as one self-contained HTML file (what `insource report --out` writes)."""
    from insource.server.ui.render import render_report
    from insource.service.dashboard import overview

    path.write_text(render_report(overview(cfg, store)), encoding="utf-8")
    return path
