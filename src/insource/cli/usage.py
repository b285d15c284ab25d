"""Usage history commands: `insource usage import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from insource.cli import app
from insource.cli.common import ConfigOpt, JsonOpt, console, get_config, get_store, handle_errors, literal, print_json

usage_app = typer.Typer(help="Usage history: bring a bill's past in.", no_args_is_help=True)
app.add_typer(usage_app, name="usage")


@usage_app.command("import")
@handle_errors
def usage_import(
    file: Annotated[Path, typer.Argument(help="The bill's CSV file.", metavar="FILE", show_default=False)],
    format: Annotated[
        Literal["csv"],
        typer.Option(
            "--format",
            help="csv: columns date, tenant, model, task, requests, prompt_tokens, completion_tokens, cost_usd"
            " (task and cost_usd may be empty: the cost is then priced from the price table).",
        ),
    ],
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Import a bill's usage history (idempotent: importing a file again adds nothing; all rows or none)."""
    from insource.service.usage_import import import_usage_csv

    cfg = get_config(config)  # with a config but no store yet, the import creates it
    result = import_usage_csv(get_store(cfg, create=True), cfg, file)
    if json:
        print_json(result.as_dict())
        return
    console.print(
        f"imported {result.imported} rows from ", literal(file), f" ({result.skipped} already there, skipped)", sep=""
    )
