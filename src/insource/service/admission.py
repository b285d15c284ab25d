"""Admission of one request: parse, validate, resolve the model, rate limits, budget reservation."""

from __future__ import annotations

import re
from typing import Any

import orjson

from insource.errors import BadRequest, RateLimited
from insource.metering.prices import ModelPrice
from insource.metering.usage import Usage, cost_usd, estimate_prompt_tokens
from insource.service.request import Admission, RequestFacts
from insource.service.worker_state import WorkerState

MAX_DEPTH = 254  # what orjson can re-encode when forwarding
MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse_body(raw: bytes, model: str | None = None) -> dict[str, Any]:
    """The request's JSON object; `model`, when given (an Azure-style path's deployment), replaces its model."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request. Send valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # cheap pre-check; only deep-looking bodies are re-checked
        try:
            orjson.dumps(body)  # the encoder refuses what it could not forward (nesting deeper than 254)
        except TypeError:
            raise BadRequest(f"The JSON body is nested too deeply (more than {MAX_DEPTH} levels).") from None
    if model is not None:
        body["model"] = model
    return body


def model_name(body: dict[str, Any]) -> str | None:
    """The requested model as recorded (bounded: an unknown name comes from the client)."""
    model = body.get("model")
    return model[:MAX_NAME] if isinstance(model, str) else None


def take_task(body: dict[str, Any], header_task: str | None) -> str | None:
    """The task from `metadata.task` (removed before forwarding) or the X-Insource-Task header."""
    task: Any = None
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "task" in metadata:
        rest = {k: v for k, v in metadata.items() if k != "task"}
        task = metadata["task"]
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]
    if task is None and header_task is not None and header_task.strip():  # an empty header means no task
        task = header_task
    if task is not None and (not isinstance(task, str) or not task.strip() or len(task) > MAX_NAME):
        raise BadRequest("metadata.task must be a non-empty string of at most 200 characters", param="metadata.task")
    if task is not None and _CONTROL.search(task):
        raise BadRequest("metadata.task must not contain control characters", param="metadata.task")
    return task.strip() if isinstance(task, str) else None


def validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of message objects.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'.", param=f"messages[{i}]")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("'stream' must be a boolean.", param="stream")
    n = body.get("n", 1)
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        raise BadRequest("'n' must be an integer between 1 and 128.", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BadRequest(f"'{name}' must be a positive integer.", param=name)


def validate_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and value
        and all(isinstance(v, str | int) or (isinstance(v, list) and all(isinstance(t, int) for t in v)) for v in value)
    )
    if not ok:
        raise BadRequest("'input' must be a string or a non-empty array of strings or token arrays.", param="input")


async def admit(
    gw: WorkerState, facts: RequestFacts, body: dict[str, Any], body_len: int
) -> tuple[RequestFacts, Admission, ModelPrice]:
    """Resolve the model, then check rate limits and reserve the estimated cost on every budget. Returns the
    facts with the resolved model and what was booked; a refusal gives back the tokens it counted."""
    price = gw.model_for(facts.key, body.get("model"))
    if facts.model != body["model"]:  # a name longer than model_name keeps
        facts = facts.with_model(body["model"])
    key = facts.key
    completion = body.get("max_completion_tokens") or body.get("max_tokens")
    if facts.endpoint == "chat":
        completion = (completion or gw.cfg.server.default_max_tokens) * int(body.get("n") or 1)
    else:
        completion = 0
    prompt = estimate_prompt_tokens(body_len)
    est_tokens = prompt + completion if key.tpm is not None else 0
    try:
        retry = await gw.limits.check_rate(key.id, key.rpm, key.tpm, prompt + completion)
        if retry is not None:
            raise RateLimited(
                "Rate limit reached for this key (requests or tokens per minute). Retry later.",
                headers={"Retry-After": str(int(retry + 0.999))},
            )
        limits = gw.budget_limits(key)
        reservation = None
        if limits:
            estimate = cost_usd(Usage(prompt, 0, completion, 0), price)
            reservation = await gw.limits.reserve(limits, estimate)  # BudgetExceeded names the budget
    except BaseException:
        if est_tokens:
            gw.limits.correct_tokens(key.id, -est_tokens)
        raise
    return facts, Admission(reservation, est_tokens), price
