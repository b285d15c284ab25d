"""Turn one `CaptureRaw` into store rows, in the writer thread: redact, content-address, record provenance.

Each message is redacted, serialised canonically (sorted keys) and stored once under the sha256 of those
bytes (`blobs`, INSERT OR IGNORE), so a system prompt repeated a million times is stored once. The
`captures` row keeps the ordered list of message hashes, the other request fields (`params`), the
redacted output and which redactors ran with how many replacements each.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import orjson

from insource.capture.record import CaptureRaw
from insource.capture.redact import (
    CACHE_MAX,
    CACHE_MIN,
    Redactor,
    get_redactors,
    redact_json_text,
    redact_text,
    redact_value,
)

WriteItem = tuple[str, dict[str, Any], bool]

_SORT = orjson.OPT_SORT_KEYS


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of a value (sorted keys, compact, UTF-8)."""
    return orjson.dumps(value, option=_SORT)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def message_blob(message: Any) -> tuple[str, str]:
    """(hash, canonical JSON text) of one already-redacted message."""
    data = canonical(message)
    return sha256_hex(data), data.decode()


@lru_cache(maxsize=256)
def _repeated_message(redactors: tuple[Redactor, ...], role: str, content: str) -> tuple[str, str, tuple[Any, ...]]:
    """Blob of a plain {role, content} message with long content: system prompts repeat on every request."""
    counts: dict[str, int] = {}
    digest, data = message_blob(redact_value({"role": role, "content": content}, redactors, counts))
    return digest, data, tuple(counts.items())


def _message(message: Any, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> tuple[str, str]:
    if type(message) is dict and len(message) == 2:  # the common {role, content: str} shape: a fast path
        role, content = message.get("role"), message.get("content")
        if type(role) is str and type(content) is str:
            if CACHE_MIN <= len(content) <= CACHE_MAX:
                digest, data, found = _repeated_message(redactors, role, content)
                for name, n in found:
                    counts[name] = counts.get(name, 0) + n
                return digest, data
            return message_blob({"content": redact_text(content, redactors, counts), "role": role})
    return message_blob(redact_value(message, redactors, counts))


def redact_output(output: str, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> str:
    """Redact the captured answer. Tool calls are captured as the JSON of the calls (`[{"id", "type",
    "function": {"name", "arguments"}}]`, plain and streamed alike), so their arguments are JSON inside JSON:
    they are parsed and redacted exactly as a request's tool-call arguments are, then serialised again."""
    if redactors and output.startswith('[{"') and '"function"' in output:
        return redact_json_text(output, redactors, counts)
    return redact_text(output, redactors, counts)


@lru_cache(maxsize=64)
def _names_json(redactors: tuple[Redactor, ...]) -> str:
    return orjson.dumps([r.name for r in redactors]).decode()


def process_capture(raw: CaptureRaw) -> list[WriteItem]:
    """Rows to write for one request: blobs (ignore duplicates) then one `captures` row.

    Nothing is returned when the tenant/key has not consented. Redaction happens here, before any row
    exists; with redaction switched off for the tenant, only fields named like secrets are dropped.
    """
    if not raw.consent:
        return []
    redactors = get_redactors(raw.redactors) if raw.redact else ()
    counts: dict[str, int] = {}
    request = raw.request if isinstance(raw.request, dict) else {}
    rows: list[WriteItem] = []
    hashes: list[str] = []
    seen: set[str] = set()
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            digest, data = _message(message, redactors, counts)
            hashes.append(digest)
            if digest not in seen:
                seen.add(digest)
                rows.append(("blobs", {"hash": digest, "data": data}, True))
    params = redact_value({k: v for k, v in request.items() if k != "messages"}, redactors, counts)
    output = redact_output(raw.output, redactors, counts) if raw.output is not None else None
    rows.append(
        (
            "captures",
            {
                "id": raw.id,
                "ts": raw.ts,
                "tenant": raw.tenant,
                "key_id": raw.key_id,
                "task": raw.task,
                "model": raw.model,
                "provider": raw.provider,
                "upstream_model": raw.upstream_model,
                "upstream_version": raw.upstream_version,
                "served_by": raw.served_by,
                "terms": raw.terms,
                "consent": 1,
                "messages": orjson.dumps(hashes).decode(),
                "params": canonical(params).decode(),
                "output_hash": None if output is None else sha256_hex(output.encode()),
                "output": output,
                "finish_reason": raw.finish_reason,
                "status": raw.status,
                "redactors": _names_json(redactors),
                "redactions": orjson.dumps(counts).decode(),
            },
            True,  # idempotent: a replayed spool or a retried submit must not fail the batch
        )
    )
    return rows
