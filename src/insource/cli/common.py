"""Shared CLI plumbing: the --config option, JSON output, clean error exits, and showing stored text safely.

Anything that comes from traffic, the store, a remote gateway or the command line is shown with `literal`
(a rich Text: never parsed as markup) or `shown` (escaped for a markup string), both of which make control
characters visible, so a tenant's task name can neither crash a table nor send escape sequences to the
operator's terminal.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import math
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import orjson
import typer
from rich.console import Console

from insource.config import CONFIG_ENV, DEFAULT_CONFIG_NAME, Config, StoreConfig, find_config, load_config
from insource.errors import BadRequest, InsourceError, NotReady
from insource.store import Store, open_store
from insource.text import literal, shown, visible  # noqa: F401  (re-exported for the cli modules)

P = ParamSpec("P")
R = TypeVar("R")

err_console = Console(stderr=True)
console = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Config file (default: $INSOURCE_CONFIG, else ./insource.toml, else embedded defaults)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON value on stdout.")]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Manage a remote gateway through its admin API (key: INSOURCE_ADMIN_KEY)."),
]


MAX_LIMIT = 100_000  # --limit options: more rows than anyone reads in a terminal
MAX_SEED = 2**32 - 1
_LAST_TS = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()


def finite(value: float | None) -> float | None:
    """A typer callback for float options: NaN and infinities are refused (exit code 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def parse_when(value: str | None, option: str) -> float | None:
    """A unix timestamp, an ISO date (UTC midnight) or an ISO date-time (naive means UTC), up to year 9999."""
    if value is None:
        return None
    try:
        ts = float(value)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"invalid {option} {value!r}: use YYYY-MM-DD, an ISO date-time or a unix time") from None
        ts = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    if not (math.isfinite(ts) and 0 <= ts <= _LAST_TS):
        raise BadRequest(f"invalid {option} {value!r}: the time must lie between 1970 and the year 9999")
    return ts


def check_url(url: str) -> str:
    """--url must be an http(s) address of a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"--url must be an http:// or https:// address, got {url!r}")
    return url


_DEFAULT_STORE = StoreConfig().url.removeprefix("sqlite:///./")


def store_exists(cfg: Config) -> bool:
    path = cfg.sqlite_path()
    return path is None or path.exists()


def get_config(path: Path | None, *, setup: bool = False) -> Config:
    """The config (--config, else $INSOURCE_CONFIG, else ./insource.toml, else the embedded defaults).

    Without a config file and without a store there is nothing to read: commands refuse (exit 2), naming what
    they looked for, rather than create an empty store here. `setup` commands (serve, keys create) go on."""
    found = find_config(path)
    cfg = load_config(found)
    if found is None and not setup and not store_exists(cfg):
        raise NotReady(
            f"no insource config or store here: looked for ${CONFIG_ENV} (not set), ./{DEFAULT_CONFIG_NAME} and "
            f"./{_DEFAULT_STORE} in {Path.cwd()}. Pass --config PATH, run this where your {DEFAULT_CONFIG_NAME} "
            "is, or start with `insource demo` or `insource serve`."
        )
    return cfg


def get_store(cfg: Config, *, create: bool = False) -> Store:
    """The store. Only `create` commands (serve, keys create, route set) make a missing SQLite store; the others
    read an empty one in a temporary folder (removed at exit): nothing recorded yet, and nothing created."""
    if create or store_exists(cfg):
        return open_store(cfg)
    folder = tempfile.mkdtemp(prefix="insource-empty-")
    atexit.register(shutil.rmtree, folder, True)
    return Store(Path(folder) / "empty.db")


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print("[bold red]error:[/] ", literal(message, multiline=True), sep="", highlight=False, soft_wrap=True)
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
