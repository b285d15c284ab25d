"""The HTTP surface: the OpenAI endpoints on raw ASGI (`openai_endpoints.py`), everything else on thin
Starlette handlers over the service layer; one error mapping for both (`errors.py`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from insource.config import Config, load_config
from insource.errors import InsourceError, ModelNotFound
from insource.server import admin
from insource.server import batch as batch_api
from insource.server import feedback as feedback_api
from insource.server.auth import resolve_key
from insource.server.errors import error_response
from insource.server.metrics import render as render_metrics
from insource.server.openai_endpoints import OpenAIEndpoints
from insource.server.responses import RawJSON
from insource.server.ui import OFF_MESSAGE, LazyUI
from insource.server.ui import enabled as ui_enabled
from insource.service.keys import KeyInfo
from insource.service.worker_state import WorkerState

log = logging.getLogger("insource.server")


def authenticate(gw: WorkerState, request: Request) -> KeyInfo:
    return resolve_key(gw, request.headers.get("authorization"), request.headers.get("api-key"))


def _gw(request: Request) -> WorkerState:
    gw: WorkerState = request.app.state.gateway
    return gw


async def models(request: Request) -> Any:
    gw = _gw(request)
    key = authenticate(gw, request)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "insource"} for m in gw.visible_models(key)]
    return RawJSON(orjson.dumps({"object": "list", "data": data}))


async def model(request: Request) -> Any:
    """`GET /v1/models/{model}` (the SDK's `models.retrieve`): 404 `model_not_found` for a model the key cannot use."""
    gw = _gw(request)
    key = authenticate(gw, request)
    name = request.path_params["model"]
    if name not in gw.visible_models(key):
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
    return RawJSON(orjson.dumps({"id": name, "object": "model", "created": 0, "owned_by": "insource"}))


async def healthz(request: Request) -> Any:
    gw = _gw(request)
    writer = {k: v for k, v in gw.writer.report().items() if k != "errors"}  # no key: counts, never messages
    return RawJSON(orjson.dumps({"status": "ok", "writer": writer}))


async def metrics(request: Request) -> Any:
    if _gw(request).cfg.server.admin_key is not None:
        admin.check_admin(request)  # tenants' names and spend are operators' business
    return Response(render_metrics(_gw(request)), media_type="text/plain; version=0.0.4")


async def on_error(request: Request, exc: Exception) -> Response:
    """Starlette's door into the one error mapping (`server/errors.py`)."""
    resp = error_response(exc, request.method, request.url.path)
    return Response(resp.body, resp.status, resp.headers, media_type="application/json")


def create_app(cfg: Config) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = WorkerState(cfg)
        app.state.gateway = gw
        if not ui_enabled(cfg):
            log.warning(OFF_MESSAGE)
        await gw.start()
        poller = batch_api.start(app)
        try:
            yield
        finally:
            await batch_api.close(app, poller)
            await gw.stop()

    ui = LazyUI()
    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin.routes(),
        *feedback_api.routes(),
        *batch_api.routes(),
        Route("/ui", ui),  # the dashboard; its imports wait for its first request
        Route("/ui/{rest:path}", ui),
    ]
    handlers: dict[Any, Any] = {InsourceError: on_error, 404: on_error, 405: on_error, Exception: on_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.router.redirect_slashes = False  # a 307 built from the client's Host header is an open redirect
    return OpenAIEndpoints(app)


def app_factory() -> Any:
    """For `uvicorn --factory` with several workers: the config path comes from INSOURCE_CONFIG."""
    path = os.environ.get("INSOURCE_CONFIG")
    return create_app(load_config(path or None))
