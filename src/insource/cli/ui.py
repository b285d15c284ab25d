"""Dashboard commands: `insource ui` (the dashboard alone over the store, on 127.0.0.1) and `insource report`
(the overview as one self-contained HTML file, or JSON)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from insource.cli import app
from insource.cli.common import ConfigOpt, JsonOpt, console, fail, get_config, get_store, handle_errors, print_json

UI_HOST = "127.0.0.1"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((UI_HOST, port))
        except OSError:
            return False
    return True


def ui_app(config: Path | None) -> tuple[Any, str]:
    """The dashboard app over the configured store, and a one-time login token."""
    from insource.config import resolve_secret
    from insource.server.ui.app import UISource, build
    from insource.service.keys import server_secret

    cfg = get_config(config)
    store = get_store(cfg)
    source = UISource(
        cfg, store, server_secret(cfg, store), resolve_secret(cfg.server.admin_key), epoch=secrets.token_hex(8)
    )
    source.token_login = True
    return build(source), source.sessions.new_token()


@app.command()
@handle_errors
def ui(
    config: ConfigOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8701,
) -> None:
    """The dashboard alone over the store, on 127.0.0.1: open the printed link (it works once)."""
    import uvicorn

    if not _port_free(port):
        raise fail(f"port {port} on {UI_HOST} is in use: choose another with --port", 2)
    dashboard, token = ui_app(config)
    console.print("insource dashboard (stop with Ctrl+C). Open this link, which works once:", highlight=False)
    print(f"http://{UI_HOST}:{port}/ui/login?token={token}", flush=True)
    uvicorn.run(dashboard, host=UI_HOST, port=port, log_level="warning", access_log=False)


@app.command()
@handle_errors
def report(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the overview as one self-contained HTML file.")
    ] = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """The dashboard's overview for people who will not open a dashboard: one HTML file, or JSON."""
    if out is None and not json:
        raise fail("give --out FILE.html (one self-contained page) or --json", 2)
    from insource.service.dashboard import overview

    cfg = get_config(config)
    page = overview(cfg, get_store(cfg))
    if out is not None:
        from insource.server.ui.render import render_report

        out.write_text(render_report(page), encoding="utf-8")
    if json:
        print_json(page.to_json())
    elif out is not None:
        console.print(f"wrote {out}", highlight=False)
