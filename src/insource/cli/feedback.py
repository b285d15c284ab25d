"""`insource feedback list`: feedback sent to `POST /v1/feedback`, most recent first."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from insource.cli import app
from insource.cli.common import MAX_LIMIT, ConfigOpt, JsonOpt, get_config, handle_errors, literal, store_exists
from insource.cli.tables import Cell, Col, CsvOpt, emit, print_table
from insource.service.feedback import list_feedback
from insource.store import open_store

feedback_app = typer.Typer(help="Feedback on answered requests (POST /v1/feedback).", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")

FEEDBACK_COLUMNS = (
    Col("when (UTC)", "id", short="UTC", drop=3),
    Col("request id", "id", short="request"),
    Col("task"),
    Col("score", "num"),
    Col("label", drop=1),
    Col("correction"),
    Col("comment", drop=2),
)


@feedback_app.command("list")
@handle_errors
def feedback_list(
    task: Annotated[str | None, typer.Option("--task", help="Only feedback on this task's requests.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Most recent N entries.")] = 1000,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    csv: CsvOpt = False,
) -> None:
    """Feedback on answered requests: score, label, correction (redacted as captures are) and comment."""
    cfg = get_config(config)
    rows = list_feedback(open_store(cfg), task, limit) if store_exists(cfg) else []
    of_task = f" on task {task}" if task is not None else ""
    empty = f"No feedback{of_task} yet: POST /v1/feedback with the X-Request-Id of a response"
    if emit(rows, json=json, csv=csv, empty=empty):
        return
    print_table(FEEDBACK_COLUMNS, [_cells(r) for r in rows])


def _clip(text: str | None, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def _cells(r: dict[str, Any]) -> list[Cell]:
    score = "" if r["score"] is None else f"{r['score']:g}"
    when = r["created_at"].replace("T", " ").rstrip("Z")
    texts = (r["task"] or "", r["label"] or "", _clip(r["correction"], 60), _clip(r["comment"], 40))
    return [when, literal(r["request_id"]), literal(texts[0]), score, *(literal(t) for t in texts[1:])]
