"""The HTTP surface: thin Starlette handlers over the service layer, and one error handler."""

from __future__ import annotations

import asyncio
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
from insource.errors import InsourceError, NotFound, PayloadTooLarge, Unauthorized
from insource.server import admin
from insource.server.metrics import render as render_metrics
from insource.server.responses import RawJSON, SSEResponse
from insource.service import chat
from insource.service.gateway import Gateway
from insource.service.insourcing import attach_router
from insource.service.keys import KeyInfo

log = logging.getLogger("insource.server")


def error_response(exc: InsourceError) -> RawJSON:
    return RawJSON(exc.body_bytes(), exc.status, exc.headers)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body too large: the limit is {limit // (1024 * 1024)} MB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body too large: the limit is {limit // (1024 * 1024)} MB.")
        chunks.append(chunk)
    return b"".join(chunks)


def resolve_key(gw: Gateway, authorization: str | None, api_key: str | None) -> KeyInfo:
    """The key presented as `Authorization: Bearer KEY` (or Azure-style `api-key`), or 401."""
    if authorization and authorization[:7].lower() == "bearer ":
        presented = authorization[7:].strip()
    else:
        presented = (api_key or "").strip()
    if not presented:
        raise Unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
    info = gw.keys.lookup(presented)
    if info is None:
        raise Unauthorized("Incorrect API key provided, or the key was revoked.")
    return info


def authenticate(gw: Gateway, request: Request) -> KeyInfo:
    return resolve_key(gw, request.headers.get("authorization"), request.headers.get("api-key"))


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def chat_completions(request: Request) -> Any:
    gw = _gw(request)
    key = authenticate(gw, request)
    raw = await read_body(request, gw.max_body)
    result = await chat.chat_completion(gw, key, raw, request.headers.get("x-insource-task"))
    if isinstance(result, chat.StreamReply):
        return SSEResponse(result.events, result.headers)
    return RawJSON(result.body, result.status, result.headers)


async def embeddings(request: Request) -> Any:
    gw = _gw(request)
    key = authenticate(gw, request)
    raw = await read_body(request, gw.max_body)
    result = await chat.embeddings(gw, key, raw, request.headers.get("x-insource-task"))
    return RawJSON(result.body, result.status, result.headers)


async def models(request: Request) -> Any:
    gw = _gw(request)
    key = authenticate(gw, request)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "insource"} for m in gw.visible_models(key)]
    return RawJSON(orjson.dumps({"object": "list", "data": data}))


async def healthz(request: Request) -> Any:
    gw = _gw(request)
    return RawJSON(orjson.dumps({"status": "ok", "writer": gw.writer.report()}))


async def metrics(request: Request) -> Any:
    if _gw(request).cfg.server.admin_key is not None:
        admin.check_admin(request)  # tenants' names and spend are operators' business
    return Response(render_metrics(_gw(request)), media_type="text/plain; version=0.0.4")


async def on_insource_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InsourceError)
    return Response(exc.body_bytes(), exc.status, exc.headers, media_type="application/json")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
    body = {
        "error": {
            "message": "Internal error in insource; it has been logged.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    return Response(orjson.dumps(body), 500, media_type="application/json")


async def on_http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        err: InsourceError = NotFound(f"Method {request.method} is not allowed on {request.url.path}.", status=405)
    else:
        err = NotFound(f"Unknown path {request.url.path}.", code="unknown_url")
    return Response(err.body_bytes(), err.status, media_type="application/json")


CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_INTERNAL = orjson.dumps(
    {
        "error": {
            "message": "Internal error in insource; it has been logged.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
)


class ClientGone(Exception):
    pass


async def _read_raw_body(receive: Any, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body too large: the limit is {limit // (1024 * 1024)} MB.")
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body  # the common case: one message
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body too large: the limit is {limit // (1024 * 1024)} MB.")
        chunks.append(chunk)
    if size > limit:
        raise PayloadTooLarge(f"Request body too large: the limit is {limit // (1024 * 1024)} MB.")
    return b"".join(chunks)


class FastPath:
    """POST /v1/chat/completions straight on ASGI: no Starlette Request, router, middleware or exception
    wrappers on the hot path (they cost ~60 µs a request). Every other path goes to the Starlette app."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # state, routes, ... of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in CHAT_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            response: Any = await self._chat(scope, receive)
        except InsourceError as exc:
            response = error_response(exc)
        except ClientGone:
            return
        except Exception as exc:
            log.error("unexpected error on %s: %s", scope["path"], type(exc).__name__, exc_info=exc)
            response = RawJSON(_INTERNAL, 500)
        await response(scope, receive, send)

    async def _chat(self, scope: Any, receive: Any) -> Any:
        gw: Gateway = self.app.state.gateway
        auth = api_key = task = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"api-key":
                api_key = value.decode("latin-1")
            elif name == b"x-insource-task":
                task = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        key = resolve_key(gw, auth, api_key)
        raw = await _read_raw_body(receive, gw.max_body, declared)
        result = await chat.chat_completion(gw, key, raw, task)
        if isinstance(result, chat.StreamReply):
            return SSEResponse(result.events, result.headers)
        return RawJSON(result.body, result.status, result.headers)


def create_app(cfg: Config) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = Gateway(cfg)
        app.state.gateway = gw
        router = attach_router(gw)
        await gw.start()
        refresher = asyncio.create_task(router.refresh_loop())
        try:
            yield
        finally:
            refresher.cancel()
            await router.close()
            await gw.stop()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
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
    return FastPath(Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers))


def app_factory() -> Any:
    """For `uvicorn --factory` with several workers: the config path comes from INSOURCE_CONFIG."""
    path = os.environ.get("INSOURCE_CONFIG")
    return create_app(load_config(path or None))
