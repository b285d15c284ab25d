"""Progress of long training work: a message, and, inside counted loops, how far along it is.

The CLI turns it into a Rich progress bar (percentage and time remaining when `total` is known); library
callers may pass any function with this signature, or nothing (`quiet`).
"""

from __future__ import annotations

from typing import Protocol


class Step(Protocol):
    def __call__(self, message: str, *, done: int | None = None, total: int | None = None) -> None: ...


def quiet(message: str, *, done: int | None = None, total: int | None = None) -> None:
    """A Step that reports nothing."""
