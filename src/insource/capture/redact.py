"""Pluggable redactors: secrets and personal data are replaced by placeholders before anything is written.

A redactor is any object with a `name` and `redact(text) -> (text, count)`. Built-ins (`redact_secrets.py`,
`redact_pii.py`) are registered here; an embedding application may `register()` its own (selected by name from
`[capture] redactors`; names are never turned into imports). Built-ins run in a fixed order (secrets, iban,
card, email, phone) so that a card number is never half-eaten by the phone pattern; other redactors run after
them, in config order.

`redact_value` walks JSON-like values: every string is redacted, dict keys included; tool-call `arguments`
holding escaped JSON are parsed and redacted value by value; only genuine base64 image/audio data URLs skip.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import orjson

from insource.capture.redact_base import Redactor, RegexRedactor
from insource.capture.redact_pii import EMAIL, CardRedactor, IbanRedactor, PhoneRedactor, iban_ok, luhn_ok
from insource.capture.redact_secrets import SecretsRedactor
from insource.errors import ConfigError

__all__ = [
    "CACHE_MAX",
    "CACHE_MIN",
    "Redactor",
    "RegexRedactor",
    "available",
    "check_redactors",
    "get_redactors",
    "iban_ok",
    "is_media_data_url",
    "luhn_ok",
    "redact_json_text",
    "redact_text",
    "redact_value",
    "register",
]


# -- registry --------------------------------------------------------------------------------
BUILTIN_ORDER = ("secrets", "iban", "card", "email", "phone")
_REGISTRY: dict[str, Redactor] = {}


def register(redactor: Redactor) -> None:
    """Make a redactor selectable by name in `[capture] redactors`."""
    if not isinstance(redactor, Redactor) or not redactor.name:
        raise TypeError("a redactor needs a non-empty `name` and a `redact(text) -> (text, count)` method")
    _REGISTRY[redactor.name] = redactor
    _resolve.cache_clear()
    _redact_cached.cache_clear()


def available() -> list[str]:
    return sorted(_REGISTRY)


@lru_cache(maxsize=64)
def _resolve(names: tuple[str, ...]) -> tuple[Redactor, ...]:
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ConfigError(
            f"unknown redactor(s) {', '.join(repr(n) for n in unknown)} in [capture] redactors "
            f"(available: {', '.join(available())})"
        )
    builtin = [n for n in BUILTIN_ORDER if n in names]
    extra = [n for n in dict.fromkeys(names) if n not in BUILTIN_ORDER]
    return tuple(_REGISTRY[n] for n in (*builtin, *extra))


@lru_cache(maxsize=64)
def _min_length(redactors: tuple[Redactor, ...]) -> int:
    """Strings shorter than every redactor's `min_length` (optional attribute, default 1) are skipped."""
    return min(int(getattr(r, "min_length", 1)) for r in redactors)


def get_redactors(names: Iterable[str]) -> tuple[Redactor, ...]:
    """Resolve redactor names (raises ConfigError naming unknown ones)."""
    return _resolve(tuple(names))


def check_redactors(names: Iterable[str]) -> None:
    """Validate `[capture] redactors` at startup so a typo fails loudly, not in the writer thread."""
    get_redactors(names)


def _apply(redactors: tuple[Redactor, ...], text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    counts: list[tuple[str, int]] = []
    for r in redactors:
        text, n = r.redact(text)
        if n:
            counts.append((r.name, n))
    return text, tuple(counts)


@lru_cache(maxsize=2048)
def _redact_cached(redactors: tuple[Redactor, ...], text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    return _apply(redactors, text)


# Strings repeat across requests (system prompts, label lists, classification answers): redaction results
# are cached, bounded in count and size (<= 2048 x 32 KB in the worst case; typical entries are small).
CACHE_MIN, CACHE_MAX = 200, 32_768


def redact_text(text: str, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> str:
    """Redact one string, adding per-redactor counts into `counts`."""
    if not redactors or len(text) < _min_length(redactors):
        return text
    out, found = _redact_cached(redactors, text) if len(text) <= CACHE_MAX else _apply(redactors, text)
    for name, n in found:
        counts[name] = counts.get(name, 0) + n
    return out


# keys whose string values are structure, not content (never redacted)
_STRUCTURAL = frozenset({"role", "type", "id", "tool_call_id", "detail", "format", "finish_reason", "model"})
# keys that are never redacted themselves (their values are): the OpenAI wire format's own field names
_WIRE_KEYS = _STRUCTURAL | frozenset(
    {
        "content", "text", "name", "messages", "tool_calls", "function", "arguments", "parameters", "properties",
        "description", "metadata", "image_url", "input_audio", "url", "data", "tools", "tool_choice",
        "response_format", "json_schema", "schema", "temperature", "max_tokens", "max_completion_tokens", "top_p",
        "stream", "stream_options", "include_usage", "user", "stop", "seed", "logprobs", "top_logprobs",
        "presence_penalty", "frequency_penalty", "logit_bias", "strict", "required", "enum", "items",
        "additionalProperties", "parallel_tool_calls", "input", "encoding_format", "dimensions", "modalities",
        "audio", "voice", "prediction", "reasoning_effort", "service_tier", "store", "refusal",
    }
)  # fmt: skip
# keys whose values are always dropped, whatever the redaction switch says
SECRET_KEYS = frozenset(
    {
        "api_key", "api-key", "apikey", "x-api-key", "authorization", "password", "passwd", "secret",
        "client_secret", "access_token", "refresh_token",
    }
)  # fmt: skip
_MEDIA_URL_RE = re.compile(r"data:(?:image|audio)/[A-Za-z0-9.+\-]{1,64};base64,")


def is_media_data_url(value: str) -> bool:
    """A genuine inline image/audio payload: `data:image/*|audio/*;base64,` then strict base64, nothing else."""
    m = _MEDIA_URL_RE.match(value)
    if m is None:
        return False
    try:
        binascii.a2b_base64(value[m.end() :], strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return False
    return True


def redact_value(value: Any, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> Any:
    """Redact every string inside a JSON-like value (dicts and their keys, lists, content parts, tool calls)."""
    if isinstance(value, str):
        if value.startswith("data:") and is_media_data_url(value):
            return value  # inline media (base64): nothing textual to redact, and costly to scan
        return redact_text(value, redactors, counts)
    if isinstance(value, dict):
        return _redact_dict(value, redactors, counts)
    if isinstance(value, list):
        return [redact_value(v, redactors, counts) for v in value]
    return value


def _redact_dict(value: dict[Any, Any], redactors: tuple[Redactor, ...], counts: dict[str, int]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in value.items():
        key = _redact_key(k, out, redactors, counts) if redactors and isinstance(k, str) else k
        if k in _STRUCTURAL and isinstance(v, str):
            out[key] = v
        elif isinstance(k, str) and k.lower() in SECRET_KEYS:
            out[key] = "[SECRET]"
            counts["secrets"] = counts.get("secrets", 0) + 1
        elif k == "arguments" and isinstance(v, str) and redactors:
            out[key] = redact_json_text(v, redactors, counts)
        else:
            out[key] = redact_value(v, redactors, counts)
    return out


def _redact_key(key: str, taken: dict[Any, Any], redactors: tuple[Redactor, ...], counts: dict[str, int]) -> str:
    """A dict key redacted like any text; two keys redacted alike stay distinct (`[EMAIL]`, `[EMAIL]#2`)."""
    if key in _WIRE_KEYS:
        return key
    out = redact_text(key, redactors, counts)
    if out not in taken:
        return out
    n = 2
    while f"{out}#{n}" in taken:
        n += 1
    return f"{out}#{n}"


def redact_json_text(text: str, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> str:
    """Redact a string holding JSON (tool-call arguments) exactly as the same JSON sent as a value would be.

    With escapes inside (`\\n`, `\\"`), the text is parsed, redacted value by value and re-serialised, so
    a private key or a quoted password inside a JSON string is seen as the redactors see plain text.
    Without escapes, or when it is not JSON, it is redacted as text (keeping its formatting).
    """
    if "\\" not in text or not text.lstrip().startswith(("{", "[")):
        return redact_text(text, redactors, counts)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return redact_text(text, redactors, counts)
    found: dict[str, int] = {}
    try:
        out = orjson.dumps(redact_value(parsed, redactors, found)).decode()
    except orjson.JSONEncodeError:  # nested beyond what orjson writes: fall back to the text rules
        return redact_text(text, redactors, counts)
    for name, n in found.items():
        counts[name] = counts.get(name, 0) + n
    return out


for _r in (SecretsRedactor(), IbanRedactor(), CardRedactor(), EMAIL, PhoneRedactor()):
    register(_r)
