"""CLI: `insource distill`, `insource eval`, `insource models list|show`."""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from insource.cli import app
from insource.cli.common import (
    ConfigOpt,
    JsonOpt,
    console,
    err_console,
    finite,
    get_config,
    handle_errors,
    literal,
    print_json,
    shown,
    visible,
)
from insource.cli.tables import Cell, Col, CsvOpt, emit, fit_table, print_table

DEFAULT_TARGET = 0.99
NO_THRESHOLD_EXIT = 3  # `eval --target-agreement A`: no threshold reaches A (a contract scripts rely on)

models_app = typer.Typer(help="The registry of distilled students.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM (`kill`, a CI or container timeout) unwinds like Ctrl-C, so the half-built staging folder is
    removed instead of being left in the registry; exit code 143 as for a plain SIGTERM. The exit is raised
    where the signal lands, which may be inside a native module's import (onnxruntime turns it into an
    ImportError): whatever it became on the way up, the command still ends with that exit code, no traceback."""
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (an embedding program): keep its handling
        yield
        return
    try:
        yield
    except BaseException:
        if received:
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


StudentOpt = Annotated[
    str,
    typer.Option(
        "--student",
        help="classifier | classifier-strong | lora | auto (train both classifiers, keep the one that "
        "insources more of validation at --target-agreement)",
    ),
]
BaseModelOpt = Annotated[
    Path | None, typer.Option("--base-model", help="lora only: Hugging Face causal LM folder to adapt.")
]
DistillTargetOpt = Annotated[
    float | None,
    typer.Option(
        "--target-agreement",
        callback=finite,
        help="Agreement you will route at: the validation split must hold enough examples to show it "
        "(0.99 needs 99); auto also picks the student at it (default 0.99).",
    ),
]
EpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--epochs",
        help="lora only: passes over the training split (default: 2 for 1,000 examples or more when the estimate "
        "fits 30 minutes, else 1; the time estimate printed before training grows with it).",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Train even when the validation split is too small to estimate agreement.")
]


@app.command()
@handle_errors
def distill(
    task: Annotated[str, typer.Option("--task", help="Task to distill.")],
    student: StudentOpt = "classifier",
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Dataset folder (default: newest built).")] = None,
    base_model: BaseModelOpt = None,
    target: DistillTargetOpt = None,
    force: ForceOpt = False,
    epochs: EpochsOpt = None,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Train a student on a task's dataset and register it as TASK@vN (auto: the better of two).

    A validation split too small to estimate agreement is refused (exit 2, saying how many examples it needs).

    Needed: 9 to show agreement 0.9, A/(1-A) for --target-agreement A (99 for 0.99). --force trains anyway.
    """
    from insource.cli.progress import StageProgress
    from insource.distill.service import distill as run_distill

    cfg = get_config(config)
    store = None
    if dataset is None:
        from insource.cli.common import get_store

        store = get_store(cfg)
    with _terminate_cleanly(), StageProgress(err_console, f"{task}: ") as progress:
        result = run_distill(
            cfg,
            task,
            student=student,
            dataset=dataset,
            store=store,
            step=progress.step,
            base_model=base_model,
            target=target,
            force=force,
            epochs=epochs,
        )
        progress.say(f"registered {result['model']}")
    _print_distilled(result, json_out)


def _print_distilled(result: dict[str, Any], json_out: bool) -> None:
    """Candidates and warnings on stderr; the result as JSON, or its metrics then TASK@vN as the last line."""
    if "candidates" in result:
        err_console.print(_candidates_table(result, err_console.width))
    for warning in result.get("warnings", []):
        err_console.print(literal("warning: " + warning, style="yellow"), soft_wrap=True)
    if json_out:
        print_json(result)
        return
    for key, value in sorted(result["metrics"].items()):
        console.print(literal(f"{key}: {_fmt(value)}"), soft_wrap=True)
    console.print(literal(result["model"]), soft_wrap=True)  # never wrapped: scripts read the last line


CANDIDATE_COLUMNS = (
    Col("model", "id"),
    Col("student"),
    Col("val coverage", "num", short="coverage"),
    Col("val agreement", "num", short="agreement"),
    Col("threshold", "num", short="thr."),
)


def _candidates_table(result: dict[str, Any], width: int) -> Table:
    rows: list[list[Cell]] = []
    for cand in result["candidates"]:
        style = "bold green" if cand["model"] == result["model"] else ""
        values = (cand["model"], cand["student"], *(_fmt(cand[k]) for k in _CANDIDATE_METRICS))
        rows.append([literal(v, style=style) for v in values])
    return fit_table(
        CANDIDATE_COLUMNS,
        rows,
        width=width,
        title=literal(f"candidates on val at agreement ≥ {_fmt(result.get('target_agreement'))}"),
        caption=literal(f"picked {result['model']}: highest validation coverage (ties go to the default classifier)"),
    )


_CANDIDATE_METRICS = ("val_coverage_at_target", "val_agreement_at_threshold", "threshold")
_EVAL_KEYS = (
    "metric",
    "agreement",
    "ece",
    "ood_rate",
    "target_agreement",
    "threshold",
    "coverage_at_threshold",
    "agreement_at_threshold",
    "meets_target",
    "end_to_end_agreement",
    "gold_agreement",
    "teacher_gold_agreement",
    "latency_ms_p50",
    "cpu_s_per_answer",
    "answers_per_s_per_core",
    "cost_per_1k_usd",
    "teacher_cost_per_1k_usd",
)
EVAL_COLUMNS = (Col("metric", "id"), Col("value", "num"))


def _eval_table(result: dict[str, Any], width: int) -> Table:
    rows: list[list[Cell]] = [[key, literal(_fmt(result[key]))] for key in _EVAL_KEYS if key in result]
    title = literal(f"{result['model']} on {result['split']} (n={result['n']})")
    return fit_table(EVAL_COLUMNS, rows, width=width, title=title)


def _no_threshold_note(result: dict[str, Any]) -> str:
    """Why eval found no threshold, and what would give one."""
    target, n = float(result["target_agreement"]), int(result.get("val_n") or 0)
    note = (
        f"no confidence threshold reaches agreement {target:g} on validation with its safety margin "
        "(Wilson lower bound, z = 1): at this target the teacher keeps answering everything"
    )
    if target >= 1.0:
        return note + "; the bound never reaches 1: choose a --target-agreement below 1"
    from insource.evals.metrics import examples_needed

    needed = examples_needed(target) or 0  # a perfect student's bound is n / (n + 1)
    if n < needed:
        note += (
            f"; with {n} validation examples even a perfect student's bound is {n / (n + 1):.3f}: "
            f"capture more traffic (at least {needed} validation examples) or lower --target-agreement"
        )
    return note


EvalTargetOpt = Annotated[
    float | None,
    typer.Option(
        "--target-agreement",
        callback=finite,
        help="Agreement the threshold must reach (default 0.99). When given and no threshold reaches it, "
        "the exit code is 3 (the results are still printed and saved).",
    ),
]
MetricOpt = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="Generative students: json | exact | similarity | judge (the teacher grades each answer, both orders, "
        "metered as audits; default: chosen from the teacher's answers).",
    ),
]


@app.command("eval")
@handle_errors
def eval_cmd(
    task: Annotated[str, typer.Option("--task", help="Task the model was distilled for.")],
    model: Annotated[str, typer.Option("--model", help="TASK@vN or TASK@latest.")],
    split: Annotated[str, typer.Option("--split", help="train | val | test")] = "test",
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Dataset folder (default: the model's).")] = None,
    target: EvalTargetOpt = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Gold labels file (id,label).")] = None,
    chart: Annotated[Path | None, typer.Option("--chart", help="Write a chart (.html or .png).")] = None,
    metric: MetricOpt = None,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Measure a student against its teacher: agreement, calibration, coverage, threshold, latency, cost.

    Exit codes: 0 done; 2 bad input; 3 no confidence threshold reaches the --target-agreement A given.
    """
    from insource.evals.run import evaluate

    if chart is not None:
        from insource.evals.chart import check_chart_path

        check_chart_path(chart)  # a bad name is refused before anything is evaluated or saved
    cfg = get_config(config)
    with err_console.status(literal(f"evaluating {model} on {split}")):
        result = evaluate(
            cfg,
            task,
            model,
            split=split,
            dataset=dataset,
            target=DEFAULT_TARGET if target is None else target,
            labels_file=labels,
            metric=metric,
        )
    _print_evaluation(result, chart, json_out)
    if target is not None and result.get("threshold") is None:
        raise typer.Exit(NO_THRESHOLD_EXIT)


def _print_evaluation(result: dict[str, Any], chart: Path | None, json_out: bool) -> None:
    """The chart file, why no threshold was found (stderr), then the result as JSON or a table."""
    if chart is not None:
        from insource.evals.chart import write_chart

        write_chart(result, chart)
        err_console.print(literal(f"chart written to {chart}"))
    if result.get("threshold") is None:
        err_console.print(literal(_no_threshold_note(result), style="yellow"), soft_wrap=True)
    if json_out:
        print_json(result)
    else:
        console.print(_eval_table(result, console.width))


@models_app.command("list")
@handle_errors
def models_list(json_out: JsonOpt = False, csv: CsvOpt = False, config: ConfigOpt = None) -> None:
    """Every registered student version, with its status (missing or damaged weight files are named)."""
    from insource.registry.entries import list_models

    rows = list_models(get_config(config).registry_path())
    if emit(rows, json=json_out, csv=csv, empty="No students registered yet: run `insource distill --task TASK`"):
        return
    print_table(MODEL_COLUMNS, [_model_cells(r) for r in rows], title="students")


MODEL_COLUMNS = (
    Col("name"),
    Col("student"),
    Col("created (UTC)", "id", short="created", drop=1),
    Col("val_agreement", "num", short="val agr."),
    Col("status"),
)


def _when(created_at: Any) -> str:
    """model.json's ISO time as `YYYY-MM-DD HH:MM` UTC (as stored when it is something else)."""
    try:
        when = dt.datetime.fromisoformat(str(created_at))
    except ValueError:
        return _fmt(created_at)
    return (when.astimezone(dt.UTC) if when.tzinfo else when).strftime("%Y-%m-%d %H:%M")


def _model_cells(row: dict[str, Any]) -> list[Cell]:
    problem = str(row.get("problem", "")).removeprefix(f"corrupt registry entry {row['name']}: ")
    status = literal(f"damaged: {problem}", style="red") if row["status"] != "ok" else Text("ok")
    return [
        literal(row["name"]),
        literal(_fmt(row["student"])),
        literal(_when(row["created_at"])),
        literal(_fmt(row["metrics"].get("val_agreement"))),
        status,
    ]


@models_app.command("show")
@handle_errors
def models_show(
    name: Annotated[str, typer.Argument(help="TASK@vN or TASK@latest")],
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """One student: its model.json, status (its weights are loaded to check them), thresholds, model card."""
    from insource.errors import NotReady
    from insource.registry.entries import read_model_info, read_thresholds, resolve, verify_entry

    folder = resolve(get_config(config).registry_path(), name)
    info = read_model_info(folder)
    problem = verify_entry(folder)
    info.update(status="ok" if problem is None else "damaged", path=str(folder))
    if problem is not None:
        info["problem"] = problem
    try:
        info["thresholds"] = read_thresholds(folder)
    except NotReady as exc:
        info.update(thresholds={}, eval_error=f"{exc.message} (run insource eval again to rewrite it)")
    if json_out:
        print_json(info)
        return
    card = folder / "card.md"
    if card.is_file():
        from rich.markdown import Markdown

        console.print(Markdown(visible(card.read_text("utf-8", errors="replace"), multiline=True)))
    console.print(literal(f"thresholds: {info['thresholds'] or 'none yet (run insource eval)'}"))
    if "eval_error" in info:
        err_console.print(literal(info["eval_error"], style="yellow"))
    status = "[green]ok[/]" if problem is None else f"[red]damaged: {shown(problem)}[/]"
    console.print(f"status: {status}")
