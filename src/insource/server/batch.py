"""The Batch API's HTTP surface (`/v1/files`, `/v1/batches`): thin handlers over `service/batches.py`."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from insource.errors import BadRequest, PayloadTooLarge
from insource.server.auth import resolve_key
from insource.server.bodies import read_limited
from insource.server.responses import RawJSON
from insource.service.batches import BatchService
from insource.service.keys import KeyInfo
from insource.service.worker_state import WorkerState

MAX_FILE = 200 * 1024 * 1024  # OpenAI's limit for a batch input file
MAX_LIMIT = 10_000


def _service(request: Request) -> tuple[BatchService, KeyInfo]:
    gw: WorkerState = request.app.state.gateway
    key = resolve_key(gw, request.headers.get("authorization"), request.headers.get("api-key"))
    service: BatchService | None = getattr(request.app.state, "batches", None)
    if service is None:
        service = request.app.state.batches = BatchService(gw)
    return service, key


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"'limit' must be an integer between 1 and {MAX_LIMIT}.", param="limit")
    return int(raw)


def _json(obj: Any) -> RawJSON:
    return RawJSON(orjson.dumps(obj))


async def upload_file(request: Request) -> RawJSON:
    service, key = _service(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FILE:
        raise PayloadTooLarge(f"The file is too large: the limit is {MAX_FILE // (1024 * 1024)} MB.")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("Upload the file as multipart/form-data with fields 'file' and 'purpose'.", param="file")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as exc:  # a malformed multipart body
        raise BadRequest(f"The upload could not be read: {exc.detail}", param="file") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise BadRequest("Missing required parameter: 'file'.", param="file")
        if upload.size is not None and upload.size > MAX_FILE:
            raise PayloadTooLarge(f"The file is too large: the limit is {MAX_FILE // (1024 * 1024)} MB.")
        data = await upload.read()
    finally:
        await form.close()
    return _json(await service.upload(key, upload.filename or "batch.jsonl", data, purpose))


async def list_files(request: Request) -> RawJSON:
    service, key = _service(request)
    return _json(await service.list_files(key, request.query_params.get("purpose"), _limit(request, MAX_LIMIT)))


async def get_file(request: Request) -> RawJSON:
    service, key = _service(request)
    return _json(await service.file(key, request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    service, key = _service(request)
    return Response(await service.content(key, request.path_params["file_id"]), media_type="application/octet-stream")


async def delete_file(request: Request) -> RawJSON:
    service, key = _service(request)
    return _json(await service.delete_file(key, request.path_params["file_id"]))


async def create_batch(request: Request) -> RawJSON:
    service, key = _service(request)
    raw = await read_limited(request, 1024 * 1024)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request. Send valid JSON.") from None
    return _json(await service.create(key, body, request.headers.get("x-insource-task")))


async def list_batches(request: Request) -> RawJSON:
    service, key = _service(request)
    return _json(await service.list(key, _limit(request, 20), request.query_params.get("after")))


async def get_batch(request: Request) -> RawJSON:
    service, key = _service(request)
    return _json(await service.retrieve(key, request.path_params["batch_id"]))


async def cancel_batch(request: Request) -> RawJSON:
    service, key = _service(request)
    return _json(await service.cancel(key, request.path_params["batch_id"]))


def routes() -> list[Route]:
    return [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]


def start(app: Any) -> asyncio.Task[None] | None:
    """At startup (after the gateway's): the poller that meters batches as they finish (`[batch] poll_s`)."""
    gw: WorkerState = app.state.gateway
    if gw.cfg.batch.poll_s <= 0:
        return None
    app.state.batches = service = BatchService(gw)
    return asyncio.create_task(service.poll_loop())


async def close(app: Any, poller: asyncio.Task[None] | None) -> None:
    """At shutdown: stop the poller and close the upstream clients the Batch API opened."""
    if poller is not None:
        poller.cancel()
    service: BatchService | None = getattr(app.state, "batches", None)
    if service is not None:
        await service.close()
