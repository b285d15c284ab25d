"""The fake upstream's Files and Batch APIs, in OpenAI's wire format (objects, JSONL lines and errors as
OpenAI's API reference shows them).

Endpoints (Bearer auth, as chat): ``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files``,
``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``, ``POST /v1/batches``,
``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

A batch is ``validating`` when created and runs at its first retrieval at least `complete_after_s` after its
creation: each line is answered by the fake's own chat/embeddings logic (its `responder`, token counting and
validation), answers with status 200 go to the output file, the others to the error file. Control attributes:
`complete_after_s`, `fail_custom_ids` (custom ids answered 500), `files`, `batches` (plain dicts).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from insource.testing import wire
from insource.testing.chat_rules import InvalidRequest, validate_chat, validate_embeddings

if TYPE_CHECKING:
    from insource.testing.fake_upstream import FakeUpstream

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
TERMINAL = ("completed", "failed", "expired", "cancelled")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _error(message: str, status: int = 400, param: str | None = None, code: str | None = None) -> Response:
    return _json(wire.openai_error(message, "invalid_request_error", param, code), status)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


class FakeBatches:
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.reset()

    def reset(self) -> None:
        self.complete_after_s = 0.0
        self.fail_custom_ids: set[str] = set()
        self.files: dict[str, dict[str, Any]] = {}  # id -> {"object": file object, "data": bytes}
        self.batches: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files", self._list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self._file, methods=["GET"]),
            Route("/v1/files/{file_id}", self._delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self._content, methods=["GET"]),
            Route("/v1/batches", self._create, methods=["POST"]),
            Route("/v1/batches", self._list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self._retrieve, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self._cancel, methods=["POST"]),
        ]

    # -- files -------------------------------------------------------------------------------
    def add_file(self, filename: str, data: bytes, purpose: str) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": f"file-{uuid.uuid4().hex[:24]}",
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "expires_at": None,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files[str(obj["id"])] = {"object": obj, "data": data}
        return obj

    async def _authorized(self, request: Request, body: Any = None) -> Response | None:
        from insource.testing.fake_upstream import _Reply  # the module that imports this one

        await self.fake._record(request, body)
        try:
            self.fake._check_auth(request, azure=False)
        except _Reply as reply:
            return reply.response
        return None

    async def _upload(self, request: Request) -> Response:
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        denied = await self._authorized(request, {"purpose": purpose})
        if denied is not None:
            return denied
        if not isinstance(upload, UploadFile):
            return _error("Missing required parameter: 'file'.", param="file")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data", "evals", "vision"):
            return _error(f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        return _json(self.add_file(upload.filename or "upload.jsonl", await upload.read(), str(purpose)))

    def _find_file(self, request: Request) -> dict[str, Any] | None:
        return self.files.get(request.path_params["file_id"])

    def _no_file(self, request: Request) -> Response:
        return _error(f"No such File object: {request.path_params['file_id']}", 404, "id")

    async def _list_files(self, request: Request) -> Response:
        denied = await self._authorized(request)
        if denied is not None:
            return denied
        data = [f["object"] for f in self.files.values()]
        return _json({"object": "list", "data": data, "has_more": False})

    async def _file(self, request: Request) -> Response:
        denied = await self._authorized(request)
        found = self._find_file(request)
        return denied or (_json(found["object"]) if found else self._no_file(request))

    async def _content(self, request: Request) -> Response:
        denied = await self._authorized(request)
        found = self._find_file(request)
        if denied is not None or found is None:
            return denied or self._no_file(request)
        return Response(found["data"], media_type="application/octet-stream")

    async def _delete_file(self, request: Request) -> Response:
        denied = await self._authorized(request)
        found = self.files.pop(request.path_params["file_id"], None)
        if denied is not None or found is None:
            return denied or self._no_file(request)
        return _json({"id": found["object"]["id"], "object": "file", "deleted": True})

    # -- batches -----------------------------------------------------------------------------
    async def _create(self, request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        denied = await self._authorized(request, body)
        if denied is not None:
            return denied
        if str(body.get("input_file_id")) not in self.files:
            return _error(f"No such File object: {body.get('input_file_id')}", 404, "input_file_id")
        if body.get("endpoint") not in ENDPOINTS:
            return _error(f"Invalid value for 'endpoint': {body.get('endpoint')!r}.", param="endpoint")
        if body.get("completion_window") != "24h":
            return _error("Invalid value for 'completion_window': only '24h' is supported.", param="completion_window")
        now = int(time.time())
        batch = {
            "id": f"batch_{uuid.uuid4().hex[:24]}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86_400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[batch["id"]] = batch
        return _json(batch)

    async def _list_batches(self, request: Request) -> Response:
        denied = await self._authorized(request)
        return denied or _json({"object": "list", "data": list(self.batches.values()), "has_more": False})

    async def _retrieve(self, request: Request) -> Response:
        denied = await self._authorized(request)
        batch = self.batches.get(request.path_params["batch_id"])
        if denied is not None or batch is None:
            return denied or _error(f"No such Batch object: {request.path_params['batch_id']}", 404, "batch_id")
        if batch["status"] == "validating" and time.time() >= batch["created_at"] + self.complete_after_s:
            await self._run(batch)
        return _json(batch)

    async def _cancel(self, request: Request) -> Response:
        denied = await self._authorized(request)
        batch = self.batches.get(request.path_params["batch_id"])
        if denied is not None or batch is None:
            return denied or _error(f"No such Batch object: {request.path_params['batch_id']}", 404, "batch_id")
        if batch["status"] in TERMINAL:
            return _error(f"Cannot cancel a batch with status '{batch['status']}'.", 409)
        batch.update(status="cancelled", cancelling_at=int(time.time()), cancelled_at=int(time.time()))
        return _json(batch)

    # -- running a batch ---------------------------------------------------------------------
    async def _answer(self, line: dict[str, Any], endpoint: str) -> tuple[int, Any]:
        body = line.get("body")
        if line.get("custom_id") in self.fail_custom_ids:
            return 500, wire.openai_error("The server had an error processing your request.", "server_error")
        if not isinstance(body, dict) or body.get("stream"):
            message = "Invalid body: streaming is not supported in batches."
            return 400, wire.openai_error(message, "invalid_request_error")
        try:
            if endpoint == "/v1/embeddings":
                validate_embeddings(body, require_model=True)
                response = self.fake._embeddings(str(body.get("model")), body)
            else:
                validate_chat(body, require_model=True)
                response = await self.fake._chat(str(body["model"]), body, azure=False)
        except InvalidRequest as exc:
            return exc.status, exc.body()
        return response.status_code, orjson.loads(bytes(response.body))

    async def _run(self, batch: dict[str, Any]) -> None:
        data = self.files[batch["input_file_id"]]["data"]
        lines = [orjson.loads(raw) for raw in data.splitlines() if raw.strip()]
        done: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for line in lines:
            status, body = await self._answer(line, batch["endpoint"])
            row = {
                "id": f"batch_req_{uuid.uuid4().hex[:24]}",
                "custom_id": line.get("custom_id"),
                "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
                "error": None,
            }
            (done if status == 200 else failed).append(row)
        now = int(time.time())
        out = self.add_file(f"{batch['id']}_output.jsonl", _jsonl(done), "batch_output") if done else None
        err = self.add_file(f"{batch['id']}_error.jsonl", _jsonl(failed), "batch_output") if failed else None
        batch.update(
            status="completed",
            in_progress_at=now,
            finalizing_at=now,
            completed_at=now,
            output_file_id=out["id"] if out else None,
            error_file_id=err["id"] if err else None,
            request_counts={"total": len(lines), "completed": len(done), "failed": len(failed)},
        )
