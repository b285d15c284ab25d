"""Metering a finished batch: one usage record per line of its output and error files, at the batch price
(`metering.prices.batch_price`), each chat answer captured like any other traffic.

Record ids are derived from (batch id, custom_id), and records and captures are written ignoring duplicates, so
metering a batch twice (two workers, a retry after a crash) adds nothing. The record's request id is the line's
`id` (`batch_req_...`, as the caller sees it in the output file): feedback can name it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.config import UNDECLARED_TERMS
from insource.metering.prices import ModelPrice, batch_price
from insource.metering.usage import Usage, cost_usd, parse_usage
from insource.service.streams import output_of
from insource.service.worker_state import WorkerState
from insource.store.sqlite import Row

log = logging.getLogger("insource.batches")
WriteItem = tuple[str, Row, bool]
ENDPOINT = "batch"  # the usage records' endpoint: batch traffic is its own row in `spend --by endpoint`


@dataclass(frozen=True, slots=True)
class Policy:
    consent: bool
    redact: bool


@dataclass(slots=True)
class Metered:
    rows: list[WriteItem]
    records: int
    cost_usd: float


def record_id(batch_id: str, custom_id: str) -> str:
    return "bat_" + hashlib.sha256(f"{batch_id}\x00{custom_id}".encode()).hexdigest()[:32]


def _lines(data: bytes) -> list[dict[str, Any]]:
    out = []
    for raw in data.splitlines():
        try:
            line = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            continue  # an upstream line insource cannot read is not billed by guess
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            out.append(line)
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _outcome(line: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    """(status, response body, error code) of one output/error line."""
    response = line.get("response")
    if isinstance(response, dict):
        body = _dict(response.get("body"))
        status = response.get("status_code")
        status = status if isinstance(status, int) else 500
        code = None if status == 200 else str(_dict(body.get("error")).get("code") or "upstream_error")
        return status, body, code
    return 500, {}, str(_dict(line.get("error")).get("code") or "upstream_error")


def _usage_row(batch: Row, line: dict[str, Any], ts: float, task: str | None) -> Row:
    status, body, code = _outcome(line)
    usage = (parse_usage(body.get("usage")) if status == 200 else None) or Usage()
    return {
        "id": record_id(batch["id"], line["custom_id"]),
        "request_id": str(line.get("id") or line["custom_id"])[:128],
        "ts": ts,
        "tenant": batch["tenant"],
        "key_id": batch["key_id"],
        "endpoint": ENDPOINT,
        "model": batch["model"],
        "served_by": f"{batch['provider']}:{batch['upstream_model']}",
        "task": task,
        "stream": 0,
        "status": status,
        "error_code": code,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": 0.0,
        "cost_avoided_usd": 0.0,
        "latency_ms": None,
        "ttft_ms": None,
        "attempts": 1,
    }


def _capture(
    gw: WorkerState, batch: Row, row: Row, request: dict[str, Any], body: dict[str, Any], policy: Policy
) -> Any:
    output, finish = output_of(body)
    provider = gw.cfg.providers.get(batch["provider"])
    raw = CaptureRaw(
        id=row["id"],
        ts=row["ts"],
        tenant=row["tenant"],
        key_id=row["key_id"],
        task=row["task"],
        model=batch["model"],
        provider=batch["provider"],
        upstream_model=batch["upstream_model"],
        served_by=row["served_by"],
        terms=provider.terms if provider else UNDECLARED_TERMS,
        consent=policy.consent,
        redact=policy.redact,
        redactors=tuple(gw.cfg.capture.redactors),
        request={**request, "model": batch["model"]},
        output=output,
        response=body,
        upstream_version=body.get("model") if isinstance(body.get("model"), str) else None,
        finish_reason=finish,
        status=row["status"],
        cost_usd=row["cost_usd"],
    )
    return process_capture(raw)


def meter(
    gw: WorkerState, batch: Row, finished: dict[str, Any], inputs: bytes, outputs: list[bytes], policy: Policy
) -> Metered:
    """The rows to write for a finished batch (run in a thread: parsing and redaction are CPU work)."""
    listed = gw.prices.get(batch["model"])
    if listed is None:  # the alias left the config since: the records still count, at no price
        log.warning("batch %s: model %r has no price any more; metered at 0", batch["id"], batch["model"])
    price: ModelPrice = batch_price(listed or ModelPrice.free())
    requests = {line["custom_id"]: line.get("body") or {} for line in _lines(inputs)}
    tasks: dict[str, str] = orjson.loads(batch.get("tasks") or "{}")
    ts = float(finished.get("completed_at") or finished.get("failed_at") or finished.get("cancelled_at") or 0)
    ts = ts or float(batch["created_at"])
    rows: list[WriteItem] = []
    total = 0.0
    records = 0
    seen: set[str] = set()
    for line in (line for data in outputs for line in _lines(data)):
        if line["custom_id"] in seen:
            continue
        seen.add(line["custom_id"])
        row = _usage_row(batch, line, ts, tasks.get(line["custom_id"], batch["task"]))
        _, body, _ = _outcome(line)
        if row["status"] == 200:
            usage = Usage(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], row["reasoning_tokens"])
            row["cost_usd"] = cost_usd(usage, price)
            total += row["cost_usd"]
        rows.append(("usage", row, True))
        records += 1
        request = requests.get(line["custom_id"])
        if row["status"] == 200 and batch["endpoint"] == "/v1/chat/completions" and isinstance(request, dict):
            rows.extend(_capture(gw, batch, row, request, body, policy))
    return Metered(rows, records, total)
