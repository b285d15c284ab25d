"""The `insource` command line. Thin Typer commands; the work happens in service/ and friends.

Each module registers its commands on `app` when imported.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

app = typer.Typer(
    name="insource",
    help="Stop renting your AI: gateway, capture, distill, evaluate and route.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("insource")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from insource import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"insource {_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Stop renting your AI: gateway, capture, distill, evaluate and route."""


def _register() -> None:
    from insource.cli import analytics, data, demo, feedback, gateway, models, money, route, ui, usage  # noqa: F401


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _register()
    app()
