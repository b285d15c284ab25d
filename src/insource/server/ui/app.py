"""The dashboard's HTTP handlers: login (admin key, or a one-time token from `insource ui`), logout, the pages,
their CSV, the report download, the route "turn off" button, and the static files (plotly.js from the
installed package, served once with a long cache). Pages are built and rendered in a worker thread so the
gateway's event loop never waits on them."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from insource.config import Config
from insource.errors import InsourceError
from insource.server.ui import render
from insource.server.ui.session import COOKIE, Sessions, csrf_ok, same_origin
from insource.service import dashboard
from insource.service.dashboard_types import Page
from insource.store import Store

log = logging.getLogger("insource.ui")
MAX_FORM_BYTES = 16 * 1024
PATIENCE_S = 8.0  # a page waits this long for a costly analysis, then says it is running (see dashboard_analytics)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


@dataclass
class UISource:
    """What the dashboard reads: the config, the store, the server secret, and who may log in."""

    cfg: Config
    store: Store
    secret: bytes
    admin_key: str | None
    flush: Callable[[], object] | None = None  # make the gateway's queued records visible first
    epoch: str = ""  # `insource ui`: a per-run value, so its cookies end with it
    token_login: bool = False  # `insource ui`: one-time tokens open sessions
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.secret, self.admin_key, self.epoch)


def _src(request: Request) -> UISource:
    source: UISource = request.app.state.ui
    return source


def html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers=SECURITY_HEADERS)


async def message(status: int, heading: str, text: str, csrf: str = "") -> HTMLResponse:
    body = await asyncio.to_thread(render.render, "message.html", title=heading, heading=heading, text=text, csrf=csrf)
    return html(body, status)


def to_login() -> RedirectResponse:
    return RedirectResponse("/ui/login", 303, headers=SECURITY_HEADERS)


def authed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page behind the session cookie: no valid session → 303 to the login form; a POST must come from this
    site (Origin/Referer) and carry the session's CSRF token, else 403."""

    async def endpoint(request: Request) -> Response:
        session = _src(request).sessions.read(request.cookies.get(COOKIE))
        if session is None:
            return to_login()
        if request.method == "POST":
            form = await read_form(request)
            if not same_origin(request) or not csrf_ok(session, form.get("csrf")):
                return await message(403, "Refused", "This form did not come from this dashboard: reload the page.")
        try:
            return await handler(request, session)
        except InsourceError as exc:
            return await message(
                exc.status, "Not found" if exc.status == 404 else "Error", exc.message, session["csrf"]
            )

    return endpoint


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form body (the only kind these forms send), at most 16 KB."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


def _start_session(source: UISource, request: Request) -> RedirectResponse:
    response = RedirectResponse("/ui", 303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        source.sessions.open(),
        max_age=source.sessions.max_age_s,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def login_form(request: Request) -> Response:
    source = _src(request)
    token = request.query_params.get("token")
    if token is not None:
        if source.token_login and source.sessions.redeem(token):
            return _start_session(source, request)
        return await _login_page(source, 403, "This link has been used or is not valid.")
    if source.sessions.read(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse("/ui", 303, headers=SECURITY_HEADERS)
    return await _login_page(source, 200, None)


async def _login_page(source: UISource, status: int, error: str | None) -> Response:
    body = await asyncio.to_thread(
        render.render,
        "login.html",
        title="Sign in",
        error=error,
        key_login=source.sessions.has_key,
        token_hint=source.token_login,
        csrf="",
    )
    return html(body, status)


async def login_submit(request: Request) -> Response:
    source = _src(request)
    if not same_origin(request):
        return await message(403, "Refused", "A sign-in from another site is refused.")
    form = await read_form(request)
    if not source.sessions.key_matches(form.get("key", "")):
        log.warning("dashboard: a sign-in with a wrong admin key")
        await asyncio.sleep(0.2)  # slows guessing down
        return await _login_page(source, 401, "Wrong admin key.")
    return _start_session(source, request)


async def _logout(request: Request, session: dict[str, Any]) -> Response:
    response = RedirectResponse("/ui/login", 303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


def _build_page(source: UISource, name: str, task: str | None, patience_s: float | None = None) -> Page:
    if source.flush is not None:
        source.flush()
    if task is not None:
        return dashboard.task_detail(source.cfg, source.store, task, patience_s=patience_s)
    return dashboard.PAGES[name][1](source.cfg, source.store, patience_s=patience_s)


async def _requested_page(request: Request, session: dict[str, Any]) -> Any:
    """The page the path names, built off the event loop, or a 404 response for a page that does not exist."""
    name = request.path_params.get("page", "overview")
    task = request.path_params.get("task")
    if task is None and name not in dashboard.PAGES:
        return await message(404, "Not found", f"There is no dashboard page {name!r}.", session["csrf"])
    return await asyncio.to_thread(_build_page, _src(request), name, task, PATIENCE_S)


async def _page(request: Request, session: dict[str, Any]) -> Response:
    page = await _requested_page(request, session)
    if isinstance(page, Response):
        return page
    name, task = request.path_params.get("page", "overview"), request.path_params.get("task")
    active = "tasks" if task is not None else name
    note = request.query_params.get("done")
    text = "The route was turned off: the teacher answers that task again." if note == "off" else None
    body = await asyncio.to_thread(
        render.render_page, page, session["csrf"], title=page.title, active=active, message=text
    )
    return html(body)


async def _csv(request: Request, session: dict[str, Any]) -> Response:
    page = await _requested_page(request, session)
    if isinstance(page, Response):
        return page
    panel = page.panel(request.path_params["panel"])
    if panel is None:
        return await message(404, "Not found", "There is no such table on this page.", session["csrf"])
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{panel.id}.csv"'}
    return Response(panel.csv(), 200, headers=headers, media_type="text/csv; charset=utf-8")


async def _report(request: Request, session: dict[str, Any]) -> Response:
    page = await asyncio.to_thread(_build_page, _src(request), "overview", None)
    body = await asyncio.to_thread(render.render_report, page)
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="insource-report-{stamp}.html"'}
    return Response(body, 200, headers=headers, media_type="text/html; charset=utf-8")


async def _route_off(request: Request, session: dict[str, Any]) -> Response:
    source = _src(request)
    task = request.path_params["task"]
    await asyncio.to_thread(dashboard.turn_route_off, source.cfg, source.store, task)
    log.warning("dashboard: route for task %r turned off", task)
    return RedirectResponse("/ui/routes?done=off", 303, headers=SECURITY_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    cache = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
    if name in ("ui.css", "ui.js"):
        media = "text/css" if name.endswith(".css") else "text/javascript"
        text = await asyncio.to_thread(render.static_text, name)
        return Response(text, 200, headers={**cache, "Cache-Control": "public, max-age=3600"}, media_type=media)
    plotly = await asyncio.to_thread(render.plotly_js)
    if plotly is not None and name == f"plotly-{plotly[0]}.min.js":
        return Response(plotly[1], 200, headers=cache, media_type="text/javascript")
    return Response("not found", 404, media_type="text/plain")


async def not_found(request: Request, session: dict[str, Any]) -> Response:
    return await message(404, "Not found", f"There is no dashboard page at {request.url.path}.", session["csrf"])


async def on_error(request: Request, exc: Exception) -> Response:
    log.error("dashboard: unexpected error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
    return await message(500, "Something went wrong", "The dashboard could not build this page; it has been logged.")


def build(source: UISource) -> Starlette:
    routes = [
        Route("/ui/static/{name}", static, methods=["GET"]),
        Route("/ui/login", login_form, methods=["GET"]),
        Route("/ui/login", login_submit, methods=["POST"]),
        Route("/ui/logout", authed(_logout), methods=["POST"]),
        Route("/ui", authed(_page), methods=["GET"]),
        Route("/ui/report.html", authed(_report), methods=["GET"]),
        Route("/ui/routes/{task}/off", authed(_route_off), methods=["POST"]),
        Route("/ui/tasks/{task}", authed(_page), methods=["GET"]),
        Route("/ui/tasks/{task}/csv/{panel}.csv", authed(_csv), methods=["GET"]),
        Route("/ui/{page}/csv/{panel}.csv", authed(_csv), methods=["GET"]),
        Route("/ui/{page}", authed(_page), methods=["GET"]),
        Route("/ui/{rest:path}", authed(not_found)),
        Route("/", lambda request: RedirectResponse("/ui", 303)),  # `insource ui` alone: its root
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: on_error})
    app.router.redirect_slashes = False
    app.state.ui = source
    return app


def disabled_app() -> Starlette:
    """`insource serve` without an admin key: every /ui path says how to turn the dashboard on."""
    text = (
        'The dashboard is off: set [server] admin_key = "env::NAME" in the config (and the variable NAME) to turn it '
        "on, or run `insource ui` on the gateway's host for a local dashboard over the same store."
    )

    async def off(request: Request) -> Response:
        return await message(404, "Dashboard off", text)

    methods = ["GET", "HEAD", "POST"]
    app = Starlette(routes=[Route("/ui", off, methods=methods), Route("/ui/{rest:path}", off, methods=methods)])
    app.router.redirect_slashes = False
    return app
