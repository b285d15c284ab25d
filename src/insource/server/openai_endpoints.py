"""The OpenAI endpoints on raw ASGI: the metered `POST /v1/chat/completions` and `POST /v1/embeddings` skip
Starlette's Request, router, middleware and exception wrappers (~60 µs a request). Every other path goes to
the wrapped Starlette app. Errors are answered by the one mapping of `server/errors.py`.

Apps written for Azure OpenAI (the `AzureOpenAI` SDK client, REST calls) reach the same use cases by changing
only their endpoint: `POST /openai/deployments/{DEPLOYMENT}/chat/completions?api-version=...` (and
`/embeddings`) is the model alias DEPLOYMENT, whatever `model` the body names; `api-version` is accepted as is."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from insource.errors import InsourceError, NotFound, PayloadTooLarge
from insource.server.auth import resolve_key
from insource.server.errors import error_response
from insource.server.responses import RawJSON, SSEResponse
from insource.service import chat
from insource.service.access_log import log_unmetered
from insource.service.embeddings import embeddings
from insource.service.keys import KeyInfo
from insource.service.request import new_request_id
from insource.service.worker_state import WorkerState

log = logging.getLogger("insource.server")

# (gateway, key, body, X-Insource-Task, the model an Azure-style path names, request id, whether the caller sent it)
UseCase = Callable[
    [WorkerState, KeyInfo, bytes, str | None, str | None, str | None, bool], Awaitable[chat.Reply | chat.StreamReply]
]
USE_CASES: dict[str, UseCase] = {
    "/v1/chat/completions": chat.chat_completion,
    "/chat/completions": chat.chat_completion,
    "/v1/embeddings": embeddings,
    "/embeddings": embeddings,
}
REQUEST_ID = "X-Request-Id"
SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@+=/-]{1,128}")  # a caller's id is echoed and logged: bounded, plain
AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body too large: the limit is {limit // (1024 * 1024)} MB.")


async def read_body(receive: Any, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise _too_large(limit)
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
            raise _too_large(limit)
        chunks.append(chunk)
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def _kind(scope: Any) -> str:
    return "embeddings" if scope["path"].endswith("embeddings") else "chat"


def route(path: str) -> tuple[UseCase | None, str | None]:
    """The use case of a path, and the model alias an Azure-style path names (its deployment)."""
    use_case = USE_CASES.get(path)
    if use_case is not None or not path.startswith("/openai/"):
        return use_case, None
    match = AZURE_PATH.fullmatch(path)
    return (USE_CASES["/" + match[2]], match[1]) if match else (None, None)


@dataclass(slots=True)
class Incoming:
    """What the fast path reads from a request's headers."""

    auth: str | None = None
    api_key: str | None = None
    task: str | None = None
    declared: int | None = None
    caller_id: str | None = None  # the caller's X-Request-Id, when it is a safe one


def read_headers(scope: Any) -> Incoming:
    seen = Incoming()
    for name, value in scope["headers"]:
        if name == b"authorization":
            seen.auth = value.decode("latin-1")
        elif name == b"api-key":
            seen.api_key = value.decode("latin-1")
        elif name == b"x-insource-task":
            seen.task = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            seen.declared = int(value)
        elif name == b"x-request-id" and SAFE_REQUEST_ID.fullmatch(value):
            seen.caller_id = value.decode("ascii")
    return seen


def caller_request_id(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and SAFE_REQUEST_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return None


class OpenAIEndpoints:
    def __init__(self, app: Starlette) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # state, routes, ... of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        use_case, deployment = route(scope["path"]) if scope["type"] == "http" else (None, None)
        if use_case is None:
            if scope["type"] == "http" and scope["path"].startswith(("/v1/", "/openai/")):
                await self._other(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        seen = read_headers(scope)
        rid = seen.caller_id or new_request_id()
        try:
            response: Any = await self._handle(use_case, scope, receive, deployment, seen, rid)
        except ClientGone:
            return
        except Exception as exc:  # insource refused it unless a target answered it (that sets SERVED_BY upstream)
            response = error_response(exc, scope["method"], scope["path"], rid, {chat.SERVED_BY: "insource"})
        await response(scope, receive, send)

    async def _handle(
        self, use_case: UseCase, scope: Any, receive: Any, deployment: str | None, seen: Incoming, rid: str
    ) -> Any:
        gw: WorkerState = self.app.state.gateway
        caller = seen.caller_id is not None
        try:
            if scope["method"] != "POST":
                raise NotFound(f"Method {scope['method']} is not allowed on {scope['path']}.", status=405)
            key = resolve_key(gw, seen.auth, seen.api_key)
        except InsourceError as exc:  # not metered (no tenant): still one access-log line
            if gw.access_log:
                log_unmetered(rid, scope["method"], scope["path"], exc.status, exc.code)
            raise
        try:
            raw = await read_body(receive, gw.max_body, seen.declared)
        except PayloadTooLarge as exc:
            chat.refused(gw, key, _kind(scope), exc, rid, caller)
            raise
        except ClientGone:
            chat.gone(gw, key, _kind(scope), rid, caller)
            raise
        result = await use_case(gw, key, raw, seen.task, deployment, rid, caller)
        result.headers[REQUEST_ID] = rid
        if isinstance(result, chat.StreamReply):
            return SSEResponse(result.events, result.headers)
        return RawJSON(result.body, result.status, result.headers)

    async def _other(self, scope: Any, receive: Any, send: Any) -> None:
        """Other `/v1/*` paths (models, unknown paths) through Starlette, answered with an X-Request-Id too."""
        rid = caller_request_id(scope) or new_request_id()
        header = (b"x-request-id", rid.encode("ascii"))
        gw: WorkerState | None = getattr(self.app.state, "gateway", None)

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
                if gw is not None and gw.access_log:
                    log_unmetered(rid, scope["method"], scope["path"], message["status"], None)
            await send(message)

        await self.app(scope, receive, send_with_id)
