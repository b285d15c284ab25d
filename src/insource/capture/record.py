"""What the gateway hands to capture: the raw facts of one request, gathered on the hot path.

Everything costly (parsing, redaction, hashing) happens later in the writer thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class CaptureRaw:
    id: str  # the gateway-generated usage record id (captures.id == usage.id)
    ts: float  # unix time the request arrived
    tenant: str
    key_id: str
    task: str | None
    model: str  # the model alias the client asked for
    provider: str | None  # provider name from config (None for in-house answers)
    upstream_model: str | None  # upstream model name from the target ("local:gpt-4o-mini" -> "gpt-4o-mini")
    served_by: str  # "PROVIDER:UPSTREAM_MODEL" or "TASK@vN"
    terms: str  # the terms profile name of the provider (config `terms`), "in-house" for students
    consent: bool  # capture consent of the tenant/key
    redact: bool  # whether redactors run (per-tenant switch)
    redactors: tuple[str, ...]  # redactor names to run, from [capture] redactors
    request: dict[str, Any]  # the request body as forwarded (insource fields removed)
    output: str | None  # choice 0's final text (for tool calls: JSON of the tool calls)
    response: dict[str, Any] | None  # the full (reassembled, for streams) response, or None on error
    upstream_version: str | None  # the `model` field the upstream returned (its version string)
    finish_reason: str | None
    status: int  # HTTP status returned to the client
    cost_usd: float = 0.0
