"""Data commands: tasks, dataset build, capture show/search, audit."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace a non-empty --out (never one holding the store, config, registry or spool)."
        ),
    ] = False,
    kind: Annotated[
        Kind | None,
        typer.Option(help="Override the inferred task kind (recorded in the manifest); default: inferred."),
    ] = None,
    allow_internal: Annotated[
        bool,
        typer.Option(
            "--allow-internal",
            help="Use outputs whose terms allow only internal classifiers (logged carve-out; never ship the model).",
        ),
    ] = False,
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


@app.command("tasks")
@handle_errors
def tasks_cmd(config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Tasks seen in traffic: requests answered and refused, spend, distinct outputs, classification or generation."""
    cfg = get_config(config)
    rows = list_tasks(open_store(cfg)) if store_exists(cfg) else []
    if json:
        print_json(rows)
        return
    table = Table("task", "requests", "refused", "cost (USD)", "distinct outputs", "kind")
    for r in rows:
        cost, counts = f"{r['cost_usd']:.4f}", (str(r["requests"]), str(r["refused"]))
        table.add_row(literal(r["task"]), *counts, cost, str(r["distinct_outputs"]), literal(r["kind"]))
    console.print(table)


@app.command("audit")
@handle_errors
def audit_cmd(
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Most recent N entries.")] = 100,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Dataset exports (and refusals) recorded in the audit table."""
    cfg = get_config(config)
    rows = list_audit(open_store(cfg), task=task, limit=limit) if store_exists(cfg) else []
    if json:
        print_json(rows)
        return
    table = Table("when (UTC)", "action", "task", "purpose", "target", "counts / refused")
    for r in rows:
        d: dict[str, Any] = r["detail"] or {}
        summary = d.get("counts") or {k: v.get("count") for k, v in (d.get("refused") or {}).items()}
        cells = (r["action"], r["task"], r["purpose"], r["target"], summary)
        table.add_row(_iso(r["ts"]), *(literal(v) for v in cells))
    console.print(table)


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
    contains: Annotated[str, typer.Option("--contains", help="Text to find in messages or output.")],
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="At most N results (newest first).")] = 20,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Find a task's captures whose messages or output contain a text."""
    rows = search_captures(open_existing_store(get_config(config)), task, contains, limit)
    if json:
        print_json(rows)
        return
    table = Table("id", "when (UTC)", "provider", "input", "output")
    for r in rows:
        cells = (r["id"], _iso(r["ts"]), r["provider"], (r["input"] or "")[:80], (r["output"] or "")[:40])
        table.add_row(*(literal(v) for v in cells))
    console.print(table)
