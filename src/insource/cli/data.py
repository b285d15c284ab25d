"""Data commands: tasks, dataset build, capture show/search, audit."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from insource.capture.dataset import (
    BuildOptions,
    BuildResult,
    TermsRefused,
    build_dataset,
    json_summary,
    refusal_line,
)
from insource.capture.inspect import list_audit, list_tasks, search_captures, show_capture
from insource.cli import app
from insource.cli.common import (
    MAX_LIMIT,
    MAX_SEED,
    ConfigOpt,
    JsonOpt,
    console,
    err_console,
    fail,
    get_config,
    handle_errors,
    literal,
    parse_when,
    print_json,
    store_exists,
)
from insource.cli.tables import Cell, Col, CsvOpt, emit, print_table
from insource.config import Config
from insource.errors import NotReady
from insource.store import Store, open_store

dataset_app = typer.Typer(help="Build training/evaluation datasets from captured traffic.", no_args_is_help=True)
capture_app = typer.Typer(help="Inspect captured requests.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
app.add_typer(capture_app, name="capture")


class Purpose(StrEnum):
    train = "train"
    eval = "eval"


class Split(StrEnum):
    time = "time"
    random = "random"


class Format(StrEnum):
    openai_jsonl = "openai-jsonl"
    parquet = "parquet"


class SearchIn(StrEnum):
    system = "system"
    user = "user"
    answer = "answer"
    all = "all"


class FeedbackUse(StrEnum):
    exclude_negative = "exclude-negative"
    use_corrections = "use-corrections"


class Kind(StrEnum):
    classification = "classification"
    generation = "generation"


def open_existing_store(cfg: Config) -> Store:
    """The store, which must already exist: reading commands never create an empty database."""
    if not store_exists(cfg):
        raise NotReady(f"no store at {cfg.sqlite_path()}: nothing has been captured yet (or --config points elsewhere)")
    return open_store(cfg)


def _iso(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


BuildForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Replace a non-empty --out (never one holding the store, config, registry or spool)."),
]
FeedbackOpt = Annotated[
    FeedbackUse | None,
    typer.Option(
        help="Use feedback: exclude-negative drops answers scored below 0; use-corrections also makes "
        "corrected answers the targets (recorded in the manifest)."
    ),
]
AllowInternalOpt = Annotated[
    bool,
    typer.Option(
        "--allow-internal",
        help="Use outputs whose terms allow only internal classifiers (logged carve-out; never ship the model).",
    ),
]


@dataset_app.command("build")
@handle_errors
def dataset_build(
    task: Annotated[str, typer.Option("--task", help="Task name (metadata.task / X-Insource-Task).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to create (must not exist or be empty).")],
    purpose: Annotated[Purpose, typer.Option(help="train applies the terms guard; eval is always allowed.")] = (
        Purpose.train
    ),
    since: Annotated[str | None, typer.Option(help="Only traffic at or after this time (UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Only traffic before this time (UTC).")] = None,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Remove exact and near duplicates.")] = True,
    split: Annotated[Split, typer.Option(help="time: test is later traffic than train.")] = Split.time,
    fmt: Annotated[Format, typer.Option("--format", help="Split files format.")] = Format.openai_jsonl,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the random split.")] = 0,
    force: BuildForceOpt = False,
    kind: Annotated[
        Kind | None,
        typer.Option(help="Override the inferred task kind (recorded in the manifest); default: inferred."),
    ] = None,
    feedback: FeedbackOpt = None,
    allow_internal: AllowInternalOpt = False,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Build train/val/test files with provenance from a task's captured teacher answers."""
    cfg = get_config(config)
    opts = BuildOptions(
        task=task,
        out=out,
        purpose=purpose.value,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        dedup=dedup,
        split=split.value,
        fmt=fmt.value,
        force=force,
        allow_internal=allow_internal,
        seed=seed,
        kind=kind.value if kind else None,
        feedback=feedback.value if feedback else None,
    )
    store = open_existing_store(cfg)
    try:
        result = build_dataset(store, cfg, opts)
    except TermsRefused as exc:
        if json:  # still one JSON object on stdout: nothing written, what was refused and why
            print_json(json_summary(out, task, refused=exc.refused))
        raise fail(exc.message, 3) from None
    _print_build(result, json)


def _print_build(result: BuildResult, json: bool) -> None:
    for warning in result.warnings:
        err_console.print("[yellow]warning:[/] ", literal(warning, multiline=True), sep="", highlight=False)
    excluded = result.manifest["opted_out_excluded"]
    note = f"excluded {excluded} capture(s) of tenants opted out of capture" if excluded else ""
    if json:
        if note:
            err_console.print(f"note: {note}", highlight=False)
        print_json(result.summary())
        return
    c = result.counts
    console.print(literal(f"dataset written to {result.out}"))
    console.print(literal(f"  train {c['train']}  val {c['val']}  test {c['test']}  ({result.manifest['kind']})"))
    if note:
        console.print(f"  {note}", highlight=False)
    for name, p in result.providers.items():
        console.print(literal(f"  from {name}: {p['count']} examples (terms {', '.join(p['terms'])})"))
    for name, r in result.refused.items():
        console.print(literal("refused:" + refusal_line(name, r).removeprefix("  -")))


tasks_app = typer.Typer(
    help="Tasks seen in traffic (no subcommand: the list); `assign` makes a mined template's requests a task.",
    invoke_without_command=True,
)
app.add_typer(tasks_app, name="tasks")


@tasks_app.callback()
@handle_errors
def tasks_cmd(ctx: typer.Context, config: ConfigOpt = None, json: JsonOpt = False, csv: CsvOpt = False) -> None:
    """Tasks seen in traffic: requests answered and refused, spend, distinct outputs, classification or generation
    (and why)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = get_config(config)
    rows = list_tasks(open_store(cfg)) if store_exists(cfg) else []
    empty = "No tasks seen yet: send requests through `insource serve` naming a task (metadata.task or X-Insource-Task)"
    if emit(rows, json=json, csv=csv, empty=empty):
        return
    print_table(TASK_COLUMNS, [_task_cells(r) for r in rows])
    for r in rows:  # why each task got its kind, under the table (long reasons would squeeze its columns)
        console.print(literal(f"{r['task']} is {r['kind']}: {r['kind_reason']}"))
        verdict = "distillable" if r["distillable"] else "stays on the teacher"
        console.print(literal(f"  {verdict}: {r['distillable_reason']}"))


TASK_COLUMNS = (
    Col("task"),
    Col("requests", "num", short="reqs"),
    Col("refused", "num", short="ref."),
    Col("cost (USD)", "num", short="USD"),
    Col("distinct outputs", "num", short="outputs"),
    Col("kind"),
)


def _task_cells(r: dict[str, Any]) -> list[Cell]:
    counts = (str(r["requests"]), str(r.get("refused", 0)))
    return [literal(r["task"]), *counts, f"{r['cost_usd']:.4f}", str(r["distinct_outputs"]), r["kind"]]


@app.command("audit")
@handle_errors
def audit_cmd(
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Most recent N entries.")] = 100,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    csv: CsvOpt = False,
) -> None:
    """Dataset exports (and refusals) recorded in the audit table."""
    cfg = get_config(config)
    rows = list_audit(open_store(cfg), task=task, limit=limit) if store_exists(cfg) else []
    of_task = f" for task {task}" if task is not None else ""
    empty = f"No dataset exports recorded{of_task} yet: run `insource dataset build --task TASK --out DIR`"
    if emit(rows, json=json, csv=csv, empty=empty):
        return
    print_table(AUDIT_COLUMNS, [_audit_cells(r) for r in rows])


AUDIT_COLUMNS = (
    Col("when (UTC)", "id", short="UTC"),
    Col("action"),
    Col("task"),
    Col("purpose", drop=1),
    Col("target"),
    Col("counts / refused", short="counts"),
)


def _audit_cells(r: dict[str, Any]) -> list[Cell]:
    d: dict[str, Any] = r["detail"] or {}
    summary = d.get("counts") or {k: v.get("count") for k, v in (d.get("refused") or {}).items()}
    counts = ", ".join(f"{k} {v}" for k, v in summary.items())
    return [_iso(r["ts"]), *(literal(v) for v in (r["action"], r["task"], r["purpose"], r["target"], counts))]


@capture_app.command("show")
@handle_errors
def capture_show(
    capture_id: Annotated[str, typer.Argument(metavar="ID", help="Capture (= usage record) id.")],
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """One captured request: provenance, redacted messages and output."""
    row = show_capture(open_existing_store(get_config(config)), capture_id)
    if json:
        print_json(row)
        return
    console.print(
        literal(row["id"], style="bold"),
        literal(f"  {_iso(row['ts'])}  task={row['task']}  status={row['status']}"),
        sep="",
    )
    console.print(
        literal(
            f"tenant={row['tenant']} provider={row['provider']} model={row['upstream_model']} "
            f"version={row['upstream_version']} terms={row['terms']} redactions={row['redactions']}"
        )
    )
    for m in row["messages"]:
        console.print(
            literal(f"{m.get('role', '?')}: ", style="cyan"), literal(m.get("content"), multiline=True), sep=""
        )
    console.print(literal("output: ", style="green"), literal(row["output"], multiline=True), sep="")


@capture_app.command("search")
@handle_errors
def capture_search(
    task: Annotated[str, typer.Option("--task", help="Task name.")],
    contains: Annotated[str, typer.Option("--contains", help="Text to find (case-insensitive for ASCII).")],
    where: Annotated[
        list[SearchIn] | None,
        typer.Option(
            "--in",
            help="Where to look: system, user, answer or all (repeatable); default: user messages and the answer.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="At most N results (newest first).")] = 20,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    csv: CsvOpt = False,
) -> None:
    """Find a task's captures whose user messages or answer contain a text (--in to search elsewhere)."""
    places = [w.value for w in where] if where else ["user", "answer"]
    rows = search_captures(open_existing_store(get_config(config)), task, contains, limit, places=places)
    empty = f"No capture of task {task} has {contains!r} in {' or '.join(_PLACE_NAMES[p] for p in places)}" + (
        "" if "all" in places else ": try --in all"
    )
    if emit(rows, json=json, csv=csv, empty=empty):
        return
    print_table(SEARCH_COLUMNS, [_search_cells(r) for r in rows])


_PLACE_NAMES = {
    "system": "the system prompt",
    "user": "the user's messages",
    "answer": "the answer",
    "all": "any message or the answer",
}
SEARCH_COLUMNS = (
    Col("id", "id"),
    Col("when (UTC)", "id", short="UTC", drop=2),
    Col("provider", drop=1),
    Col("input"),
    Col("output"),
)


def _clip(text: str | None, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def _search_cells(r: dict[str, Any]) -> list[Cell]:
    cells = (r["id"], _iso(r["ts"]), r["provider"], _clip(r["input"], 80), _clip(r["output"], 40))
    return [literal(v) for v in cells]
