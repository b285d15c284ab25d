"""The HTTP surface: the metered endpoints on the ASGI fast path (`fastpath.py`), everything else on thin
Starlette handlers over the service layer."""

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
from insource.errors import InsourceError, ModelNotFound, NotFound
from insource.server import admin
from insource.server.auth import resolve_key
from insource.server.fastpath import INTERNAL_ERROR, FastPath
from insource.server.metrics import render as render_metrics
from insource.server.responses import RawJSON
from insource.service.gateway import Gateway
from insource.service.keys import KeyInfo

log = logging.getLogger("insource.server")


def authenticate(gw: Gateway, request: Request) -> KeyInfo:
    return resolve_key(gw, request.headers.get("authorization"), request.headers.get("api-key"))


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
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


async def on_insource_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InsourceError)
    return Response(exc.body_bytes(), exc.status, exc.headers, media_type="application/json")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
    return Response(INTERNAL_ERROR, 500, media_type="application/json")


async def on_http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        err: InsourceError = NotFound(f"Method {request.method} is not allowed on {request.url.path}.", status=405)
    else:
        err = NotFound(f"Unknown path {request.url.path}.", code="unknown_url")
    return Response(err.body_bytes(), err.status, media_type="application/json")


def create_app(cfg: Config) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = Gateway(cfg)
        app.state.gateway = gw
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin.routes(),
    ]
    handlers: dict[Any, Any] = {
        InsourceError: on_insource_error,
        404: on_http_error,
        405: on_http_error,
        Exception: on_unexpected,
    }
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.router.redirect_slashes = False  # a 307 built from the client's Host header is an open redirect
    return FastPath(app)


def app_factory() -> Any:
    """For `uvicorn --factory` with several workers: the config path comes from INSOURCE_CONFIG."""
    path = os.environ.get("INSOURCE_CONFIG")
    return create_app(load_config(path or None))
