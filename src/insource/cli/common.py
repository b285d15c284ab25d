"""Shared CLI plumbing: the --config option, JSON output, and clean error exits."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from insource.config import Config, load_config
from insource.errors import InsourceError
from insource.store import Store, open_store

P = ParamSpec("P")
R = TypeVar("R")

err_console = Console(stderr=True)
console = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default ./insource.toml, else embedded defaults)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON value on stdout.")]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Manage a remote gateway through its admin API (key: INSOURCE_ADMIN_KEY)."),
]


def get_config(path: Path | None) -> Config:
    return load_config(path)


def get_store(cfg: Config) -> Store:
    return open_store(cfg)


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn insource errors into a clear message on stderr and a non-zero exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except InsourceError as exc:
            raise fail(exc.message, 2) from None
        except OSError as exc:
            raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 2) from None

    return wrapper
