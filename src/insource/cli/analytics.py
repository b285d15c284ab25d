"""Analytics commands: what to insource next (`opportunities`, `tasks assign`) and the provider's view (`revenue`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from insource.cli import app
from insource.cli.common import ConfigOpt, JsonOpt, console, get_config, handle_errors, literal, print_json
from insource.cli.data import open_existing_store, store_exists, tasks_app
from insource.store import open_store


@app.command("opportunities")
@handle_errors
def opportunities_cmd(config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Prompt templates mined from all captured traffic (tagged or not, with Drain / drain3), ranked by
    monthly spend × how distillable the answers look; each row says what to run next."""
    from insource.analytics.opportunities import find_opportunities

    cfg = get_config(config)
    rows = find_opportunities(open_store(cfg)) if store_exists(cfg) else []
    if json:
        print_json(rows)
        return
    if not rows:
        console.print("No captured traffic yet: send requests through `insource serve` with capture on, then re-run.")
        return
    table = Table("template", "id", "task", "requests", "USD/month", "kind", "score", "next")
    for r in rows:
        text = r["template"] if len(r["template"]) <= 160 else r["template"][:157] + "..."
        cost = f"{r['monthly_spend_usd']:.4f}"
        table.add_row(
            literal(text, multiline=True),
            literal(r["template_id"]),
            literal(r["task"] or "-"),
            str(r["requests"]),
            cost,
            literal(r["kind"]),
            f"{r['score']:.4f}",
            literal(r["next"]),
        )
    console.print(table)


@tasks_app.command("assign")
@handle_errors
def tasks_assign(
    template: Annotated[str, typer.Option("--template", help="Template id (from `insource opportunities`).")],
    task: Annotated[str, typer.Option("--task", help="Task name to give the template's requests.")],
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make a template's requests a task: past captures now (for `dataset build`), new requests at the gateway
    (every worker within a second), so untagged traffic becomes distillable without changing the app."""
    from insource.service.templates import assign_template

    result = assign_template(open_existing_store(get_config(config)), template, task)
    if json:
        print_json(result)
        return
    console.print(
        literal(f"template {result['template_id']} -> task {result['task']}: {result['tagged']} past requests tagged")
    )
