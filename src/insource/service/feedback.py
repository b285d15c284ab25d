"""Feedback on answered requests (`POST /v1/feedback`): validate it, find the request it names among the
caller's tenant's requests (another tenant's request is "not found", exactly as an unknown one), redact its
free text as captured text is redacted, and store it.

The request is named by the id its response carried (`X-Request-Id`). Usage records reach the store through
the batched writer, so a request answered a moment ago may not be there yet: this worker's writer is flushed
and, with several workers (whose writers write within 1 s under steady traffic), the look-up is tried again for up to
1.5 seconds.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from insource.capture.redact import get_redactors, redact_text
from insource.errors import BadRequest, NotFound
from insource.service.keys import KeyInfo
from insource.service.worker_state import WorkerState
from insource.store import feedback_queries as queries
from insource.store.sqlite import Row

FIELDS = ("request_id", "score", "label", "correction", "comment")
MAX_ID = 128
MAX_LABEL = 200
MAX_TEXT = 100_000  # characters of a correction or a comment
OTHER_WORKERS_S = (0.1, 0.2, 0.3, 0.4, 0.5)  # waits for another worker's writer (within 1 s when not behind)


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    score: float | None = None
    label: str | None = None
    correction: str | None = None
    comment: str | None = None


def _text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string, got {type(value).__name__}.", param=name)
    if len(value) > limit:
        raise BadRequest(f"'{name}' is too long: at most {limit} characters.", param=name)
    return value


def _score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'score' must be a number between -1 and 1, got {type(value).__name__}.", param="score")
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise BadRequest(f"'score' must be between -1 and 1, got {value}.", param="score")
    return float(value)


def parse_feedback(body: Any) -> Feedback:
    """A feedback body, strictly: a JSON object with known fields, one of score, label or correction at least."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid.strip():
        raise BadRequest("'request_id' is required: the X-Request-Id of the response.", param="request_id")
    if len(rid) > MAX_ID:
        raise BadRequest(f"'request_id' is too long: at most {MAX_ID} characters.", param="request_id")
    fb = Feedback(
        request_id=rid,
        score=_score(body.get("score")),
        label=_text(body, "label", MAX_LABEL),
        correction=_text(body, "correction", MAX_TEXT),
        comment=_text(body, "comment", MAX_TEXT),
    )
    if fb.score is None and fb.label is None and fb.correction is None:
        raise BadRequest("Give at least one of 'score', 'label' or 'correction'.", param="score")
    return fb


def parse_body(raw: bytes) -> Feedback:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request. The body must be a JSON object.") from None
    return parse_feedback(body)


async def find_usage(gw: WorkerState, tenant: str, request_id: str) -> Row | None:
    """The usage record the id names among the tenant's requests, waiting for records still being written."""
    row = await asyncio.to_thread(queries.find_request, gw.store, tenant, request_id)
    if row is None:
        await asyncio.to_thread(gw.writer.flush, 2.0)
        row = await asyncio.to_thread(queries.find_request, gw.store, tenant, request_id)
    for wait in OTHER_WORKERS_S if gw.multi_worker else ():
        if row is not None:
            break
        await asyncio.sleep(wait)
        row = await asyncio.to_thread(queries.find_request, gw.store, tenant, request_id)
    return row


def feedback_row(gw: WorkerState, key: KeyInfo, fb: Feedback, usage: Row) -> Row:
    """The row to store: free text redacted unless the tenant switched redaction off."""
    _, redact = gw.capture_policy(key)
    redactors = get_redactors(gw.cfg.capture.redactors) if redact else ()
    counts: dict[str, int] = {}
    texts = {
        name: None if value is None else redact_text(value, redactors, counts)
        for name, value in (("label", fb.label), ("correction", fb.correction), ("comment", fb.comment))
    }
    return {
        "id": f"fb_{random.getrandbits(96):024x}",
        "ts": time.time(),
        "tenant": key.tenant,
        "key_id": key.id,
        "request_id": fb.request_id,
        "usage_id": usage["id"],
        "task": usage["task"],
        "score": fb.score,
        **texts,
        "redactions": orjson.dumps(counts).decode(),
    }


def _store(gw: WorkerState, key: KeyInfo, fb: Feedback, usage: Row) -> Row:
    row = feedback_row(gw, key, fb, usage)  # redaction runs here, in a thread: never on the event loop
    queries.insert_feedback(gw.store, row)
    return row


async def submit_feedback(gw: WorkerState, key: KeyInfo, raw: bytes) -> dict[str, str]:
    """`POST /v1/feedback`: `{"id", "request_id"}` of the stored feedback, or 400/404."""
    fb = parse_body(raw)
    usage = await find_usage(gw, key.tenant, fb.request_id)
    if usage is None:
        raise NotFound(
            f"No request with id '{fb.request_id}' was found: use the X-Request-Id of a response.",
            param="request_id",
            code="request_not_found",
        )
    row = await asyncio.to_thread(_store, gw, key, fb, usage)
    return {"id": row["id"], "request_id": fb.request_id}


def list_feedback(store: Any, task: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """`insource feedback list --json`: `{"id", "request_id", "task", "score", "label", "correction", "comment",
    "created_at"}`, most recent first."""
    return [
        {
            **{k: r[k] for k in ("id", "request_id", "task", "score", "label", "correction", "comment")},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(r["ts"]))),
        }
        for r in queries.list_feedback(store, task, limit)
    ]
