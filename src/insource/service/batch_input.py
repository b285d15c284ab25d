"""A Batch API input file, checked and rewritten before it goes upstream.

Each line is `{"custom_id", "method": "POST", "url", "body"}` (OpenAI's format). insource checks every line as it
would check the request (the model alias the caller's key may use, the chat or embeddings body), takes the task
(`metadata.task`, removed as for any request), and names the upstream model instead of the alias. As at OpenAI,
one file holds requests to one model and one endpoint; the upstream is the alias's first target on an
OpenAI-kind provider (the kinds that speak the Batch API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from insource.errors import BadRequest, NotFound
from insource.providers.openai_batch import BATCH_KINDS
from insource.service.admission import take_task, validate_chat
from insource.service.keys import KeyInfo
from insource.service.worker_state import WorkerState

URLS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
MAX_LINES = 50_000  # OpenAI's limit per batch file
MAX_ID = 512


@dataclass
class BatchInput:
    """A checked input file: the bytes to upload, and what insource keeps about it."""

    data: bytes
    model: str  # the alias every line names
    provider: str
    upstream_model: str
    url: str
    lines: int
    tasks: dict[str, str] = field(default_factory=dict)  # custom_id -> task, for lines naming one


def _bad(n: int, message: str, param: str | None = None) -> BadRequest:
    return BadRequest(f"Line {n} of the batch file: {message}", param=param)


def batch_target(gw: WorkerState, alias: str) -> tuple[str, str] | None:
    """(provider, upstream model) of the alias's first target whose provider speaks the Batch API."""
    for target in gw.cfg.models[alias].targets:
        provider, _, upstream = target.partition(":")
        config = gw.cfg.providers.get(provider)
        if config is not None and config.kind in BATCH_KINDS:
            return provider, upstream
    return None


def _line(raw: bytes, n: int) -> dict[str, Any]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad(n, "not valid JSON.") from None
    if not isinstance(line, dict):
        raise _bad(n, "each line must be a JSON object.")
    unknown = sorted(set(line) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise _bad(n, f"unknown field(s) {', '.join(unknown)}.", unknown[0])
    cid = line.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_ID:
        raise _bad(n, f"'custom_id' must be a non-empty string of at most {MAX_ID} characters.", "custom_id")
    if line.get("method") != "POST":
        raise _bad(n, "'method' must be 'POST'.", "method")
    if line.get("url") not in URLS:
        raise _bad(n, f"'url' must be one of {', '.join(URLS)}.", "url")
    if not isinstance(line.get("body"), dict):
        raise _bad(n, "'body' must be a JSON object.", "body")
    return line


def _check_body(gw: WorkerState, key: KeyInfo, body: dict[str, Any], url: str, n: int) -> str | None:
    """The line's task; the body is checked as a request would be (400 naming the line)."""
    try:
        gw.model_for(key, body.get("model"))
        task = take_task(body, None)
        if URLS[url] == "chat":
            validate_chat(body)
        elif "input" not in body:
            raise BadRequest("'input' is required.", param="input")
    except (BadRequest, NotFound) as exc:  # an unknown model too: the file is what is wrong
        raise _bad(n, exc.message, exc.param) from None
    if body.get("stream"):
        raise _bad(n, "streaming is not supported in batches.", "stream")
    return task


def check_input(gw: WorkerState, key: KeyInfo, data: bytes) -> BatchInput:
    """Check every line and rewrite it for the upstream; 400 naming the first bad line."""
    rows = [raw for raw in data.splitlines() if raw.strip()]
    if not rows:
        raise BadRequest("The batch file is empty: one JSON request per line.", param="file")
    if len(rows) > MAX_LINES:
        raise BadRequest(f"The batch file has {len(rows)} lines: at most {MAX_LINES}.", param="file")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    tasks: dict[str, str] = {}
    first: dict[str, Any] = {}
    for n, raw in enumerate(rows, 1):
        line = _line(raw, n)
        first = first or {"model": line["body"].get("model"), "url": line["url"]}
        if line["url"] != first["url"] or line["body"].get("model") != first["model"]:
            raise _bad(n, "every line of a batch file must use the same model and url.", "model")
        if line["custom_id"] in seen:
            raise _bad(n, f"duplicate custom_id {line['custom_id']!r}.", "custom_id")
        seen.add(line["custom_id"])
        task = _check_body(gw, key, line["body"], line["url"], n)
        if task is not None:
            tasks[line["custom_id"]] = task
        out.append(line)
    target = batch_target(gw, first["model"])
    if target is None:
        raise BadRequest(f"The model '{first['model']}' has no upstream that supports the Batch API.", param="model")
    provider, upstream = target
    for line in out:
        line["body"]["model"] = upstream
    data = b"".join(orjson.dumps(line) + b"\n" for line in out)
    return BatchInput(data, first["model"], provider, upstream, first["url"], len(out), tasks)
