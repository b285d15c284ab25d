"""The Batch API (`/v1/files`, `/v1/batches`), passed through to OpenAI-kind upstreams.

A file is checked and rewritten on its way up (`batch_input.py`); the ids are the upstream's, and insource keeps
which tenant owns each file and batch: another tenant's is not found, exactly as an unknown one. A batch is
metered when insource first sees it finished (retrieved by its tenant, which is how a caller learns its output
file): one usage record per line at the batch price, chat answers captured (`batch_metering.py`). Budgets:
creating a batch is refused once the key's or tenant's budget is spent; its cost is booked when metered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson

from insource.errors import BadRequest, NotFound, ServiceUnavailable
from insource.metering.budgets import Reservation
from insource.providers.openai_batch import BatchUpstream
from insource.service import batch_metering
from insource.service.admission import take_task
from insource.service.batch_input import check_input
from insource.service.keys import KeyInfo
from insource.service.worker_state import WorkerState
from insource.store import batch_queries as q
from insource.store.sqlite import Row

log = logging.getLogger("insource.batches")
SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
TERMINAL = ("completed", "failed", "expired", "cancelled")
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}


def _to_thread(fn: Any, *args: Any) -> Any:
    return asyncio.to_thread(fn, *args)


def _page(objects: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }


def _not_found(kind: str, ident: str, param: str) -> NotFound:
    return NotFound(f"No such {kind} object: {ident[:128]}", param=param)


class BatchService:
    """Per worker: the upstream clients for files and batches (made on first use) and the use cases."""

    def __init__(self, gw: WorkerState) -> None:
        self.gw = gw
        self._upstreams: dict[str, BatchUpstream] = {}
        self._metering: set[str] = set()

    def upstream(self, provider: str) -> BatchUpstream:
        if provider not in self.gw.cfg.providers:
            raise ServiceUnavailable(f"The provider '{provider}' of this file or batch is no longer configured.")
        if provider not in self._upstreams:
            self._upstreams[provider] = BatchUpstream(provider, self.gw.cfg.providers[provider])
        return self._upstreams[provider]

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.close()

    # -- files -------------------------------------------------------------------------------
    async def _owned_file(self, key: KeyInfo, file_id: str) -> Row:
        row = await _to_thread(q.get_file, self.gw.store, key.tenant, file_id) if SAFE_ID.fullmatch(file_id) else None
        if row is None:
            raise _not_found("File", file_id, "file_id")
        return dict(row)

    async def upload(self, key: KeyInfo, filename: str, data: bytes, purpose: Any) -> dict[str, Any]:
        if purpose != "batch":
            raise BadRequest("Only purpose 'batch' is supported through insource.", param="purpose")
        checked = await _to_thread(check_input, self.gw, key, data)
        obj = await self.upstream(checked.provider).upload(filename[:255] or "batch.jsonl", checked.data, "batch")
        row = {
            "id": str(obj.get("id")),
            "tenant": key.tenant,
            "key_id": key.id,
            "provider": checked.provider,
            "purpose": "batch",
            "model": checked.model,
            "upstream_model": checked.upstream_model,
            "endpoint": checked.url,
            "lines": checked.lines,
            "tasks": orjson.dumps(checked.tasks).decode(),
            "object": orjson.dumps(obj).decode(),
            "created_at": time.time(),
        }
        await _to_thread(q.insert_file, self.gw.store, row)
        return obj

    async def list_files(self, key: KeyInfo, purpose: str | None, limit: int) -> dict[str, Any]:
        rows = await _to_thread(q.list_files, self.gw.store, key.tenant, purpose, limit)
        return _page([orjson.loads(r["object"]) for r in rows])

    async def file(self, key: KeyInfo, file_id: str) -> dict[str, Any]:
        row = await self._owned_file(key, file_id)
        return await self.upstream(row["provider"]).file(file_id)

    async def content(self, key: KeyInfo, file_id: str) -> bytes:
        row = await self._owned_file(key, file_id)
        return await self.upstream(row["provider"]).content(file_id)

    async def delete_file(self, key: KeyInfo, file_id: str) -> dict[str, Any]:
        row = await self._owned_file(key, file_id)
        deleted = await self.upstream(row["provider"]).delete_file(file_id)
        await _to_thread(q.delete_file, self.gw.store, key.tenant, file_id)
        return deleted

    async def _adopt_file(self, batch: Row, file_id: Any) -> None:
        """An output or error file of the tenant's batch becomes the tenant's (to read its content)."""
        if not isinstance(file_id, str) or not SAFE_ID.fullmatch(file_id):
            return
        if await _to_thread(q.get_file, self.gw.store, batch["tenant"], file_id) is not None:
            return
        obj = await self.upstream(batch["provider"]).file(file_id)
        row = dict.fromkeys(q.FILE_COLUMNS)
        row.update(id=file_id, tenant=batch["tenant"], key_id=batch["key_id"], provider=batch["provider"])
        row.update(purpose=str(obj.get("purpose") or "batch_output"), object=orjson.dumps(obj).decode())
        row.update(model=batch["model"], created_at=time.time())
        await _to_thread(lambda: q.insert_file(self.gw.store, row, ignore=True))

    # -- batches -----------------------------------------------------------------------------
    async def create(self, key: KeyInfo, body: Any, header_task: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise BadRequest(f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise BadRequest("'input_file_id' is required.", param="input_file_id")
        file = await self._owned_file(key, file_id)
        if file["purpose"] != "batch":
            raise BadRequest(f"The file {file_id} is not a batch input file.", param="input_file_id")
        if body.get("endpoint") != file["endpoint"]:
            raise BadRequest(f"'endpoint' must be {file['endpoint']}, the url of the file's lines.", param="endpoint")
        task = take_task(body, header_task)  # metadata.task is insource's, as for any request
        reservation = await self.gw.limits.reserve(self.gw.budget_limits(key), 0.0)  # refused once spent
        self.gw.limits.settle(reservation, 0.0)
        obj = await self.upstream(file["provider"]).create_batch(body)
        row = {k: file[k] for k in ("provider", "model", "upstream_model", "endpoint")}
        row.update(id=str(obj.get("id")), tenant=key.tenant, key_id=key.id, input_file_id=file_id, task=task)
        row.update(status=str(obj.get("status")), object=orjson.dumps(obj).decode(), created_at=time.time())
        await _to_thread(q.insert_batch, self.gw.store, row)
        return obj

    async def _owned_batch(self, key: KeyInfo, batch_id: str) -> Row:
        found = SAFE_ID.fullmatch(batch_id)
        row = await _to_thread(q.get_batch, self.gw.store, key.tenant, batch_id) if found else None
        if row is None:
            raise _not_found("Batch", batch_id, "batch_id")
        return dict(row)

    async def _seen(self, key: KeyInfo | None, batch: Row, obj: dict[str, Any]) -> dict[str, Any]:
        """Keep the upstream's latest view; a finished batch's files become the tenant's and it is metered."""
        await _to_thread(q.update_batch, self.gw.store, batch["id"], str(obj.get("status")), orjson.dumps(obj).decode())
        for name in ("output_file_id", "error_file_id"):
            await self._adopt_file(batch, obj.get(name))
        if obj.get("status") in TERMINAL and batch["metered_at"] is None and batch["id"] not in self._metering:
            self._metering.add(batch["id"])
            try:
                await self._meter(key, batch, obj)
            finally:
                self._metering.discard(batch["id"])
        return obj

    async def retrieve(self, key: KeyInfo, batch_id: str) -> dict[str, Any]:
        batch = await self._owned_batch(key, batch_id)
        return await self._seen(key, batch, await self.upstream(batch["provider"]).batch(batch_id))

    async def cancel(self, key: KeyInfo, batch_id: str) -> dict[str, Any]:
        batch = await self._owned_batch(key, batch_id)
        return await self._seen(key, batch, await self.upstream(batch["provider"]).cancel_batch(batch_id))

    async def list(self, key: KeyInfo, limit: int, after: str | None) -> dict[str, Any]:
        rows = await _to_thread(q.list_batches, self.gw.store, key.tenant, 10_000)
        if after is not None:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        return _page([orjson.loads(r["object"]) for r in rows[:limit]], has_more=len(rows) > limit)

    # -- polling -----------------------------------------------------------------------------
    async def poll_once(self) -> int:
        """Ask the upstream about every unfinished batch not polled for `[batch] poll_s` (by any worker): those
        found finished are metered. Returns how many were polled."""
        every = self.gw.cfg.batch.poll_s
        now = time.time()
        polled = 0
        for batch in await _to_thread(q.due_batches, self.gw.store, now - every):
            if not await _to_thread(q.claim_poll, self.gw.store, batch["id"], now, now - every):
                continue  # another worker's turn
            if batch["provider"] not in self.gw.cfg.providers:
                continue  # its provider left the config: nothing to ask (a retrieve says so)
            obj = await self.upstream(batch["provider"]).batch(batch["id"])
            await self._seen(None, dict(batch), obj)
            polled += 1
        return polled

    async def poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gw.cfg.batch.poll_s)
            try:
                await self.poll_once()
            except Exception:  # an upstream or the store down: logged, tried again next round
                log.exception("batch poll failed")

    # -- metering ----------------------------------------------------------------------------
    def _policy(self, key: KeyInfo | None, batch: Row) -> batch_metering.Policy:
        if key is not None and key.id == batch["key_id"]:
            consent, redact = self.gw.capture_policy(key)
            return batch_metering.Policy(consent, redact)
        tenant = self.gw.cfg.capture.tenants.get(batch["tenant"])
        consent = tenant.enabled if tenant else self.gw.cfg.capture.enabled
        return batch_metering.Policy(consent, tenant.redact if tenant else True)

    async def _meter(self, key: KeyInfo | None, batch: Row, obj: dict[str, Any]) -> None:
        upstream = self.upstream(batch["provider"])
        inputs = await upstream.content(batch["input_file_id"])
        ids = [obj.get(name) for name in ("output_file_id", "error_file_id")]
        outputs = [await upstream.content(fid) for fid in ids if isinstance(fid, str) and SAFE_ID.fullmatch(fid)]
        file = await _to_thread(q.get_file, self.gw.store, batch["tenant"], batch["input_file_id"])
        batch = {**batch, "tasks": file["tasks"] if file else None}
        metered = await _to_thread(batch_metering.meter, self.gw, batch, obj, inputs, outputs, self._policy(key, batch))
        await _to_thread(self._write, batch["id"], metered)
        scopes = (f"key:{batch['key_id']}", f"tenant:{batch['tenant']}")
        self.gw.limits.settle(Reservation(scopes, 0.0), metered.cost_usd)

    def _write(self, batch_id: str, metered: batch_metering.Metered) -> None:
        q.write_records(self.gw.store, metered.rows)
        q.mark_metered(self.gw.store, batch_id, time.time(), metered.records)
