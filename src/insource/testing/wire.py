"""OpenAI / Azure OpenAI wire-format builders used by the fake upstream.

Everything here is pure (no I/O, no state) so it can be tested and reused on its own.

Deterministic token counting rule (used for every `usage` figure the fake reports):

* a token is a maximal run of word characters (``\\w+``, so ``refund_request`` is one token) or one
  single non-space, non-word character (each punctuation mark is a token); whitespace is free;
* a prompt costs 3 tokens of reply priming, plus for each message 3 tokens of overhead, the tokens of
  its text content (non-text content parts cost a flat 85 tokens each), 1 token plus the name's tokens
  when it has a ``name``, and the tokens of the JSON of its ``tool_calls``; tool definitions cost the
  tokens of their JSON;
* a completion costs the tokens of its content (or of the tool name plus its JSON arguments), plus
  the configured reasoning tokens (OpenAI counts reasoning inside ``completion_tokens``).

Streams are cut into one piece per token, each piece carrying the whitespace that precedes it, so the
concatenation of the pieces is exactly the non-streamed content.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
PIECE_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_DATE_RE = re.compile(r"(?:\d{4}-\d{2}-\d{2}|-\d{4})$")

#: Release dates the fake appends to bare model names (OpenAI reports the dated snapshot).
MODEL_VERSIONS: dict[str, str] = {
    "gpt-4o-mini": "2024-07-18",
    "gpt-4o": "2024-08-06",
    "gpt-4.1": "2025-04-14",
    "gpt-4.1-mini": "2025-04-14",
    "gpt-4.1-nano": "2025-04-14",
    "o3-mini": "2025-01-31",
}
DEFAULT_MODEL_VERSION = "2024-07-18"
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
NON_TEXT_PART_TOKENS = 85

_SAFE = {"filtered": False, "severity": "safe"}
_NOT_DETECTED = {"filtered": False, "detected": False}


def count_tokens(text: str) -> int:
    """Number of tokens in `text` under the module's documented rule."""
    return len(TOKEN_RE.findall(text))


def split_pieces(text: str) -> list[str]:
    """Cut `text` into stream pieces, one per token; ``"".join(split_pieces(t)) == t``."""
    return PIECE_RE.findall(text)


def content_text(content: Any) -> tuple[str, int]:
    """(text, extra tokens) of a message `content` (str, None or a list of content parts)."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    extra = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                extra += NON_TEXT_PART_TOKENS
    return "\n".join(texts), extra


def count_prompt_tokens(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    """Prompt tokens of a chat request (see the module docstring for the rule)."""
    total = REPLY_PRIMING
    for message in messages:
        text, extra = content_text(message.get("content"))
        total += MESSAGE_OVERHEAD + count_tokens(text) + extra
        name = message.get("name")
        if isinstance(name, str):
            total += 1 + count_tokens(name)
        if message.get("tool_calls"):
            total += count_tokens(orjson.dumps(message["tool_calls"]).decode())
    if tools:
        total += count_tokens(orjson.dumps(tools).decode())
    return total


def versioned_model(model: str, enabled: bool = True) -> str:
    """The model name a real upstream reports: bare names get their snapshot date appended."""
    if not enabled or _DATE_RE.search(model) or model.startswith("text-embedding") or "/" in model:
        return model
    return f"{model}-{MODEL_VERSIONS.get(model, DEFAULT_MODEL_VERSION)}"


def usage_block(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> dict[str, Any]:
    """OpenAI `usage` object. `completion_tokens` must already include `reasoning_tokens`."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def cached_token_count(prompt_tokens: int, setting: float, min_prompt_tokens: int) -> int:
    """Cached prompt tokens: `setting` is a fraction (float < 1) or a fixed count (>= 1)."""
    if setting <= 0 or prompt_tokens < min_prompt_tokens:
        return 0
    if isinstance(setting, float) and setting < 1:
        return int(prompt_tokens * setting)
    return min(int(setting), prompt_tokens)


# ---------------------------------------------------------------- choices


@dataclass
class Choice:
    """One generated choice: either text `content` or one tool call."""

    index: int
    content: str | None
    finish_reason: str
    tool_name: str | None = None
    tool_arguments: str | None = None
    tool_call_id: str | None = None

    def completion_tokens(self) -> int:
        if self.tool_name is not None:
            return count_tokens(self.tool_name) + count_tokens(self.tool_arguments or "")
        return count_tokens(self.content or "")

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.tool_name is not None:
            msg["tool_calls"] = [self.tool_call()]
        return msg

    def tool_call(self) -> dict[str, Any]:
        return {
            "id": self.tool_call_id,
            "type": "function",
            "function": {"name": self.tool_name, "arguments": self.tool_arguments},
        }


def example_from_schema(schema: Any, text: str, depth: int = 0) -> Any:
    """A value valid for a (simple) JSON schema; strings take `text`."""
    if not isinstance(schema, dict) or depth > 6:
        return text
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: example_from_schema(props.get(k, {}), text, depth + 1) for k in keys}
    if kind == "array":
        return [example_from_schema(schema.get("items", {}), text, depth + 1)]
    defaults: dict[str, Any] = {"integer": 1, "number": 1.0, "boolean": True, "null": None}
    return defaults.get(str(kind), text)


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """(text cut to `max_tokens` tokens, whether it was cut)."""
    if max_tokens is None:
        return text, False
    pieces = split_pieces(text)
    kept: list[str] = []
    tokens = 0
    for piece in pieces:
        if not piece.strip():
            kept.append(piece)
            continue
        if tokens >= max_tokens:
            return "".join(kept).rstrip(), True
        kept.append(piece)
        tokens += 1
    return text, False


# ---------------------------------------------------------------- responses


@dataclass
class Meta:
    """Per-response identity fields."""

    id: str
    created: int
    model: str
    fingerprint: str
    azure: bool = False


def choice_filter_results() -> dict[str, Any]:
    return {
        "hate": dict(_SAFE),
        "protected_material_code": dict(_NOT_DETECTED),
        "protected_material_text": dict(_NOT_DETECTED),
        "self_harm": dict(_SAFE),
        "sexual": dict(_SAFE),
        "violence": dict(_SAFE),
    }


def prompt_filter_results() -> list[dict[str, Any]]:
    results = {
        "hate": dict(_SAFE),
        "jailbreak": dict(_NOT_DETECTED),
        "self_harm": dict(_SAFE),
        "sexual": dict(_SAFE),
        "violence": dict(_SAFE),
    }
    return [{"prompt_index": 0, "content_filter_results": results}]


def chat_completion(meta: Meta, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming `chat.completion` object (Azure adds the content-filter fields)."""
    out_choices: list[dict[str, Any]] = []
    for ch in choices:
        item: dict[str, Any] = {
            "index": ch.index,
            "message": ch.message(),
            "logprobs": None,
            "finish_reason": ch.finish_reason,
        }
        if meta.azure:
            item["content_filter_results"] = choice_filter_results()
        out_choices.append(item)
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": out_choices,
        "usage": usage,
        "system_fingerprint": meta.fingerprint,
    }
    if meta.azure:
        body["prompt_filter_results"] = prompt_filter_results()
    else:
        body["service_tier"] = "default"
    return body


def _chunk(meta: Meta, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.fingerprint,
        "choices": choices,
    }
    if not meta.azure:
        chunk["service_tier"] = "default"
    if include_usage:
        chunk["usage"] = None
    return chunk


def _choice_deltas(ch: Choice, azure: bool) -> list[dict[str, Any]]:
    """The per-choice stream entries for one choice: opening delta, pieces, finish."""

    def entry(delta: dict[str, Any], finish: str | None = None, filtered: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {"index": ch.index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if azure:
            item["content_filter_results"] = choice_filter_results() if filtered else {}
        return item

    out: list[dict[str, Any]] = []
    if ch.tool_name is not None:
        opening = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**ch.tool_call(), "index": 0, "function": {"name": ch.tool_name, "arguments": ""}}],
            "refusal": None,
        }
        out.append(entry(opening))
        for frag in split_pieces(ch.tool_arguments or ""):
            out.append(entry({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
    else:
        out.append(entry({"role": "assistant", "content": "", "refusal": None}))
        for piece in split_pieces(ch.content or ""):
            out.append(entry({"content": piece}, filtered=True))
    out.append(entry({}, finish=ch.finish_reason))
    return out


def stream_chunks(
    meta: Meta, choices: list[Choice], usage: dict[str, Any], include_usage: bool
) -> list[dict[str, Any]]:
    """All chunks of a streamed chat completion, choices interleaved round-robin (without [DONE])."""
    chunks: list[dict[str, Any]] = []
    if meta.azure:
        # Azure opens with an identity-less chunk that only carries the prompt filter results.
        opening = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        chunks.append({**opening, "prompt_filter_results": prompt_filter_results()})
    per_choice = [_choice_deltas(ch, meta.azure) for ch in choices]
    longest = max((len(p) for p in per_choice), default=0)
    for step in range(longest):
        for entries in per_choice:
            if step < len(entries):
                chunks.append(_chunk(meta, [entries[step]], include_usage))
    if meta.azure:
        # Azure's asynchronous content filter: an annotation-only chunk (no delta) after the finish.
        for ch in choices:
            length = len(ch.content or ch.tool_arguments or "")
            annotation = {
                "index": ch.index,
                "finish_reason": None,
                "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": length},
                "content_filter_results": choice_filter_results(),
            }
            chunks.append(_chunk(meta, [annotation], include_usage))
    if include_usage:
        final = _chunk(meta, [], False)
        final["usage"] = usage
        chunks.append(final)
    return chunks


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# ---------------------------------------------------------------- embeddings


def embedding_vector(item: Any, dim: int) -> list[float]:
    """A deterministic unit vector derived from a hash of the input item."""
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.blake2b(key + counter.to_bytes(4, "little"), digest_size=64).digest()
        values.extend(u / 2147483648.0 - 1.0 for u in struct.unpack("<16I", digest))
        counter += 1
    values = values[:dim]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64 encoded (what OpenAI sends for encoding_format=base64)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_response(
    model: str, vectors: list[list[float]], prompt_tokens: int, base64_format: bool
) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": i, "embedding": encode_base64(v) if base64_format else v}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# ---------------------------------------------------------------- errors


def openai_error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def azure_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


_DEFAULT_FAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (injected fault).", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "permission_error", None),
    404: ("The requested resource does not exist.", "invalid_request_error", None),
    408: ("Request timed out.", "timeout", None),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def fault_body(status: int, azure: bool) -> dict[str, Any]:
    """The default error body an upstream sends for an injected fault with `status`."""
    message, type_, code = _DEFAULT_FAULTS.get(
        status, (f"Injected fault with status {status}.", "server_error" if status >= 500 else "error", None)
    )
    if azure:
        return azure_error(str(status), message)
    return openai_error(message, type_, None, code)
