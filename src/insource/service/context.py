"""The life of one request as data: `RequestContext`, and turning it into a usage record."""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from insource.metering.budgets import Reservation
from insource.metering.usage import Usage
from insource.service.keys import KeyInfo


@dataclass(slots=True)
class Attempt:
    """One upstream attempt or student prediction, for traces: perf_counter() times, the error code when it failed."""

    provider: str
    upstream_model: str
    start: float
    end: float
    status: int = 200
    error: str | None = None
    student: bool = False  # a student's prediction (provider "insource", upstream_model its name), not an upstream


def new_request_id() -> str:
    # random.getrandbits: ~0.2 µs and keeps the GIL; uuid4() calls os.urandom, which releases the GIL, so the
    # event loop then waits up to sys.getswitchinterval() (5 ms) for the writer thread to hand it back.
    return f"req_{_random.getrandbits(128):032x}"


def context_for(key: KeyInfo, endpoint: str, request_id: str | None, from_caller: bool) -> RequestContext:
    """A request's context: a caller's X-Request-Id is kept apart from the record id (callers may repeat one);
    an id the gateway made is both."""
    if request_id is None:
        return RequestContext(key, endpoint)
    if from_caller:
        return RequestContext(key, endpoint, request_id=request_id)
    return RequestContext(key, endpoint, id=request_id)


@dataclass(slots=True)
class RequestContext:
    key: KeyInfo
    endpoint: str  # "chat" or "embeddings"
    id: str = field(default_factory=new_request_id)
    ts: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    model: str | None = None
    task: str | None = None
    stream: bool = False
    served_by: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    status: int = 200
    error_code: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    cost_avoided_usd: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    reservation: Reservation | None = None
    est_tokens: int = 0
    finished: bool = False
    output: str | None = None  # choice 0's final text, once known
    on_output: Callable[[str | None], None] | None = None  # e.g. a shadow comparison, called on success
    request_id: str | None = None  # the caller's X-Request-Id, when it sent a valid one; else `id`
    spans: list[Attempt] | None = None  # upstream attempts, kept only when traces are on (`service/tracing.py`)
    cache_key: str | None = None  # set when the request may be answered from (and fill) the response cache

    def mark_first_byte(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.t0) * 1000.0

    def usage_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id or self.id,
            "ts": self.ts,
            "tenant": self.key.tenant,
            "key_id": self.key.id,
            "endpoint": self.endpoint,
            "model": self.model,
            "served_by": self.served_by,
            "task": self.task,
            "stream": int(self.stream),
            "status": self.status,
            "error_code": self.error_code,
            "prompt_tokens": self.usage.prompt_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "cost_usd": self.cost_usd,
            "cost_avoided_usd": self.cost_avoided_usd,
            "latency_ms": (time.perf_counter() - self.t0) * 1000.0,
            "ttft_ms": self.ttft_ms,
            "attempts": self.attempts,  # 0: no upstream call (a student answered, or insource refused it)
        }
