"""A Rich progress display for long training work: one line per stage, a bar with time remaining for counted
loops (embedding, fine-tuning, LoRA steps), a pulsing bar otherwise. Finished stages keep their line and
their duration, so the terminal ends with a record of where the time went."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from insource.cli.common import visible


class StageProgress:
    """Use as a context manager; pass `step` wherever a `insource.registry.progress.Step` is expected."""

    def __init__(self, console: Console, prefix: str) -> None:
        self.prefix = prefix
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn(  # descriptions hold task names: shown literally, never read as markup
                "{task.description}", markup=False, table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")
            ),
            BarColumn(bar_width=10),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            expand=True,
        )
        self.current: TaskID | None = None
        self.total: int | None = None
        self.done = 0

    def __enter__(self) -> StageProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._finish()
        self.progress.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self.current is not None:
            end = self.total or 1
            self.progress.update(self.current, total=end, completed=end)
            self.progress.stop_task(self.current)
            self.current = None

    def step(self, message: str, *, done: int | None = None, total: int | None = None) -> None:
        description = visible(f"{self.prefix}{message}")
        same_loop = total is not None and total == self.total and (done or 0) >= self.done
        if self.current is not None and same_loop:
            self.progress.update(self.current, description=description, completed=done or 0)
        else:
            self._finish()
            self.current = self.progress.add_task(description, total=total, completed=done or 0)
        self.total, self.done = total, done or 0

    def say(self, message: str) -> None:
        """A last line (e.g. what was registered), shown as finished."""
        self._finish()
        task = self.progress.add_task(visible(f"{self.prefix}{message}"), total=1)
        self.progress.update(task, completed=1)  # (Rich marks a task finished on update, not on add)
        self.progress.stop_task(task)
