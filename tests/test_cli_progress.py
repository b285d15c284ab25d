"""The distill progress display: one line per stage, counted loops merged into one bar, a record at the end."""

from __future__ import annotations

import io

from rich.console import Console

from insource.cli.progress import StageProgress


def _run(calls: list[tuple[str, int | None, int | None]]) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=False, color_system=None)
    with StageProgress(console, "intent: ") as progress:
        for message, done, total in calls:
            progress.step(message, done=done, total=total)
        progress.say("registered intent@v1")
    return [line for line in out.getvalue().splitlines() if line.strip()]


def test_stages_each_get_a_finished_line_and_loops_share_one() -> None:
    lines = _run(
        [
            ("reading the dataset", None, None),
            ("embedding 300 new inputs", 0, 300),
            ("embedding 300 new inputs", 128, 300),
            ("embedding 300 new inputs", 256, 300),
            ("fine-tuning: epoch 1/2, loss 2.1", 10, 40),
            ("fine-tuning: epoch 2/2, loss 0.4", 30, 40),
            ("lexical view", None, None),
        ]
    )
    texts = [line.split("━")[0].strip() for line in lines]
    assert texts == [
        "✓ intent: reading the dataset",
        "✓ intent: embedding 300 new inputs",
        "✓ intent: fine-tuning: epoch 2/2, loss 0.4",
        "✓ intent: lexical view",
        "✓ intent: registered intent@v1",
    ]
    assert all("100%" in line for line in lines)


def test_a_loop_that_starts_over_gets_its_own_line() -> None:
    lines = _run([("embedding train", 0, 100), ("embedding train", 64, 100), ("embedding val", 0, 100)])
    assert [line.split("━")[0].strip() for line in lines] == [
        "✓ intent: embedding train",
        "✓ intent: embedding val",
        "✓ intent: registered intent@v1",
    ]
