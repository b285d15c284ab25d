"""A request as values: the facts known when it arrives (immutable), what its answer turned out to be (an
`Outcome`, immutable too), the replies handed to the HTTP layer, and the one function that turns facts and
outcome into the usage record.

Each step of `service/chat.py` returns the values the next step needs; nothing is stored on the request to be
called back later.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from insource.metering.budgets import Reservation
from insource.metering.usage import Usage
from insource.service.answerers import ReplyIds
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
    """`req_` and 32 hex digits: the milliseconds since the epoch (12), then 80 random bits (20), as in a UUIDv7.

    Time-ordered, so the store's indexes on record ids (usage, captures) take each new id at their right edge:
    with random ids every insert lands on a random page, and once the tables outgrow SQLite's page cache that
    cost 3–5× the CPU per write (`bench/store_growth.py`). random.getrandbits: ~0.2 µs and keeps the GIL;
    uuid4() calls os.urandom, which releases the GIL, so the event loop then waits up to
    sys.getswitchinterval() (5 ms) for the writer thread to hand it back."""
    return time_ordered_id("req_")


def time_ordered_id(prefix: str) -> str:
    """`prefix` and 32 hex digits, time-ordered as `new_request_id` (for any record written per request)."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{_random.getrandbits(80):020x}"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What insource knows about a request before anyone answers it. Later steps make new facts with
    `dataclasses.replace` (model, task and stream once the body is parsed)."""

    key: KeyInfo
    endpoint: str  # "chat", "embeddings" or "audit" (a teacher audit of a student answer)
    id: str = field(default_factory=new_request_id)  # the usage record's id: the gateway's own
    request_id: str | None = None  # the caller's X-Request-Id, when it sent a valid one; else `id`
    ts: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    model: str | None = None
    task: str | None = None
    stream: bool = False

    @property
    def trace_id(self) -> str:
        """The id the caller sees (X-Request-Id) and the logs name."""
        return self.request_id or self.id

    def with_model(self, model: str) -> RequestFacts:
        """These facts naming `model` (`dataclasses.replace` costs several times more per request)."""
        return RequestFacts(
            self.key, self.endpoint, self.id, self.request_id, self.ts, self.t0, model, self.task, self.stream
        )

    @property
    def reply_ids(self) -> ReplyIds:
        """The ids of a reply insource makes itself (a student's): `chatcmpl-…` from the record id, and its time."""
        return ReplyIds("chatcmpl-" + self.id[4:], int(self.ts))

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0


class Arrival(NamedTuple):
    """What is known when a request arrives, before its body is read: who sent it and its ids and times. Its
    `facts` are made once, when the body has said what it asks for (or when it ends before that)."""

    key: KeyInfo
    endpoint: str
    id: str
    request_id: str | None
    ts: float
    t0: float

    def facts(self, model: str | None = None, task: str | None = None, stream: bool = False) -> RequestFacts:
        return RequestFacts(self.key, self.endpoint, self.id, self.request_id, self.ts, self.t0, model, task, stream)


def arrive(key: KeyInfo, endpoint: str, request_id: str | None, from_caller: bool) -> Arrival:
    """A request arriving now: a caller's X-Request-Id is kept apart from the record id (callers may repeat one);
    an id the gateway made is both."""
    caller = request_id if from_caller else None
    own = request_id if request_id is not None and not from_caller else new_request_id()
    return Arrival(key, endpoint, own, caller, time.time(), time.perf_counter())


def facts_for(key: KeyInfo, endpoint: str, request_id: str | None, from_caller: bool) -> RequestFacts:
    """The facts of a request that ended before its body was read."""
    return arrive(key, endpoint, request_id, from_caller).facts()


class Admission(NamedTuple):
    """What admission booked for a request: settled by `WorkerState.finish` with the real cost and tokens.
    (Step values are immutable named tuples: built several times a request, at a fifth of a frozen dataclass's
    cost.)"""

    reservation: Reservation | None = None  # the estimated cost reserved on the key's and tenant's budgets
    est_tokens: int = 0  # the tokens counted in the key's TPM window (0: the key has no TPM limit)


NOT_ADMITTED = Admission()


NO_USAGE = Usage()  # shared: never mutated


class Outcome(NamedTuple):
    """How a request ended: who answered (or was asked last), what it cost, and its status."""

    status: int = 200
    error_code: str | None = None
    usage: Usage = NO_USAGE
    served_by: str | None = None  # "provider:model" of the target asked last, or a student's "TASK@vN"
    provider: str | None = None  # set when an upstream target answered: its cost is priced from `usage`
    upstream_model: str | None = None
    attempts: int = 0  # upstream calls made; 0: none (a student answered, or insource refused it)
    ttft_ms: float | None = None
    cost_usd: float = 0.0  # a student's own serving cost (a teacher's is priced from `usage`)
    cost_avoided_usd: float = 0.0  # what the teacher would have cost, when a student answered
    spans: list[Attempt] | None = None  # upstream attempts and student predictions, kept only when traces are on


@dataclass(slots=True)
class Reply:
    """A whole JSON response for the HTTP layer."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


@dataclass(slots=True)
class StreamReply:
    """An SSE response: the events are relayed as they come; the relay itself meters the request at its end."""

    events: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def usage_row(facts: RequestFacts, outcome: Outcome, cost: float) -> dict[str, Any]:
    """The usage record of a request: the one place it is built."""
    usage = outcome.usage
    return {
        "id": facts.id,
        "request_id": facts.request_id or facts.id,
        "ts": facts.ts,
        "tenant": facts.key.tenant,
        "key_id": facts.key.id,
        "endpoint": facts.endpoint,
        "model": facts.model,
        "served_by": outcome.served_by,
        "task": facts.task,
        "stream": int(facts.stream),
        "status": outcome.status,
        "error_code": outcome.error_code,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": cost,
        "cost_avoided_usd": outcome.cost_avoided_usd,
        "latency_ms": facts.elapsed_ms(),
        "ttft_ms": outcome.ttft_ms,
        "attempts": outcome.attempts,  # 0: no upstream call (a student answered, or insource refused it)
    }
