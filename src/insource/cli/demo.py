"""`insource demo`: the whole loop on the embedded defaults, in a few minutes, with no API key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from insource.cli import app
from insource.cli.common import JsonOpt, console, err_console, handle_errors, print_json


@app.command()
@handle_errors
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its state.")] = Path("insource-demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="A reduced run (a few minutes; the LoRA student trains on fewer tickets).")
    ] = False,
    teacher: Annotated[
        str | None,
        typer.Option("--teacher", help="A real OpenAI-compatible upstream base URL instead of the simulated one."),
    ] = None,
    teacher_key_env: Annotated[str, typer.Option(help="Env var holding the --teacher API key.")] = "OPENAI_API_KEY",
    teacher_model: Annotated[str, typer.Option(help="Upstream model name for --teacher.")] = "gpt-4o-mini",
    teacher_terms: Annotated[str, typer.Option(help="Terms profile of the --teacher provider.")] = "openai",
    before: Annotated[int, typer.Option(min=100, max=1_000_000, help="Requests answered by the teacher.")] = 3000,
    after: Annotated[int, typer.Option(min=50, max=1_000_000, help="Requests after switching to cascade.")] = 2000,
    monthly_requests: Annotated[
        int, typer.Option(min=1, max=10**15, help="Monthly volume for the savings projection.")
    ] = 30_000_000,
    generative: Annotated[
        bool,
        typer.Option(
            "--generative/--no-generative",
            help="Also the generative task (support tickets → JSON, a LoRA student) when its extras are installed.",
        ),
    ] = True,
    json: JsonOpt = False,
) -> None:
    """Gateway → capture → dataset → distill → eval → cascade, with a before/after table."""
    from insource.demo.runner import DemoSettings, run_demo

    settings = DemoSettings(
        folder=folder.resolve(),
        quick=quick,
        teacher_url=teacher,
        teacher_key_env=teacher_key_env,
        teacher_model=teacher_model,
        teacher_terms=teacher_terms,
        before=before,
        after=after,
        monthly_requests=monthly_requests,
        generative=generative,
    )
    summary = run_demo(settings, err_console if json else console)
    if json:
        print_json(summary)
