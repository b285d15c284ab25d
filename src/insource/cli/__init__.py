"""The `insource` command line. Thin Typer commands; the work happens in service/ and friends.

Each module registers its commands on `app` when imported.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="insource",
    help="Stop renting your AI: gateway, capture, distill, evaluate and route.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from insource.cli import data, demo, gateway, models, route, ui, usage  # noqa: F401


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _register()
    app()
