"""The web dashboard at `/ui`. This module stays light: Jinja2, itsdangerous and plotly are imported when a
/ui path is first requested, never on the gateway's path."""

from __future__ import annotations

from typing import Any

from insource.config import resolve_secret

OFF_MESSAGE = (
    'the dashboard at /ui is off: set [server] admin_key = "env::NAME" in the config (and export NAME) to turn it '
    "on, or run `insource ui` for a local one"
)


def enabled(cfg: Any) -> bool:
    return bool(resolve_secret(cfg.server.admin_key))


class LazyUI:
    """An ASGI app mounted on the gateway's Starlette side: built from the running gateway on first use."""

    def __init__(self) -> None:
        self._app: Any = None

    def _build(self, gw: Any) -> Any:
        from insource.server.ui.app import UISource, build, disabled_app

        admin_key = resolve_secret(gw.cfg.server.admin_key)
        if not admin_key:
            return disabled_app()
        return build(UISource(gw.cfg, gw.store, gw.secret, admin_key, flush=lambda: gw.writer.flush(0.5)))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = self._build(scope["app"].state.gateway)
        await self._app(scope, receive, send)
