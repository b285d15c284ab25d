"""Students as answerers: the small protocol a student implements to answer chat requests, alike to the
provider protocol (`providers/base.py`: `complete`, `stream`), plus a confidence.

The router (`service/insourcing.py`) asks a student's `complete` for its answer and confidence, and decides
from its policy whether that answer is served; `service/chat.py` then serves it (`reply.body`, or the events
of `stream`) and meters it like any answer. The router never builds a response: the answerer does.

Implementing a student (e.g. a generative student served by llama.cpp or vLLM, next to the in-process
classifier students of `service/students.py`):

- `name`: "TASK@vN", the `X-Insource-Served-By` header and the usage record's `served_by`;
- `async complete(body, ids) -> StudentReply`: answer the (validated, task-stripped) chat request `body`.
  Fill `text` (choice 0's text, compared with the teacher's by audits and shadow runs), `confidence` in
  [0, 1] (a cascade serves the answer only at or above its threshold; return 0.0 when the student cannot
  say), `ood` (the input is unlike anything trained on: a cascade never serves it), `compute_s` (the CPU
  or GPU seconds the answer cost: priced at `[inhouse] cpu_usd_per_hour`), `usage` (tokens counted as
  the teacher would count them: the cost avoided is priced from it) and `body` (the whole
  `chat.completion` JSON, with `ids.id` and `ids.created`; `completion_body` builds one from `text`).
  Raise any exception when it cannot answer: the router counts the failure and the teacher answers.
- `stream(body, reply, ids, include_usage) -> AsyncIterator[bytes]`: the SSE events (`data: ...\\n\\n`,
  ending with `data: [DONE]\\n\\n`) of a reply `complete` made (a cascade judged its confidence first);
  `completion_events` renders them from `text`, one content chunk per piece of `reply.pieces` (a generative
  student's tokens) or one for the whole text. The usage chunk is sent only when `include_usage`.

A student that can answer before it is judged (a generative student in full or canary mode, where no confidence
gates the answer) also implements `LiveAnswerer.live`: its events as the model generates them, so the caller's
first token comes with the model's first token; `LiveStats` says at the end what was generated and what it cost.

Plugging one in: `service/students.py:StudentPool.answerer(name)` is the one place that picks the answerer of a
registry entry (today always a `ClassifierStudent`); return the served student's answerer there for the entries
of its kind, and let `service/routes.py:_check_model` accept that kind (it refuses non-classifier students
today). Nothing else changes: the router decides from `StudentReply.confidence`, `service/chat.py` serves
`reply.body` or `stream(...)`, meters `usage` and `compute_s`, and audits compare `text` with the teacher's.
A served student that bills per request rather than per CPU second can put its price in `compute_s` (seconds
at `[inhouse] cpu_usd_per_hour`) until the economics layer gives it a price of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from insource.metering.usage import Usage


@dataclass(frozen=True, slots=True)
class ReplyIds:
    """The ids a reply carries: `chatcmpl-...` and the Unix second it was created."""

    id: str
    created: int


@dataclass(frozen=True, slots=True)
class StudentReply:
    text: str  # choice 0's text: what audits and shadow runs compare with the teacher's answer
    confidence: float  # in [0, 1]
    body: bytes  # the whole chat.completion, as the caller receives it when this reply is served
    usage: Usage  # tokens as the teacher would count them (prices the cost avoided)
    ood: bool = False  # out of distribution: a cascade never serves it
    compute_s: float = 0.0  # what the answer cost to compute, in CPU seconds
    pieces: tuple[str, ...] = ()  # the answer as generated, token by token (streamed one chunk each); () unknown
    catch_all: tuple[float, str] | None = None  # a classifier's probability of its catch-all label, and the label


class Answerer(Protocol):
    """A student that answers chat requests (see the module docstring for the contract)."""

    name: str

    async def complete(self, body: dict[str, Any], ids: ReplyIds) -> StudentReply: ...

    def stream(
        self, body: dict[str, Any], reply: StudentReply, ids: ReplyIds, include_usage: bool
    ) -> AsyncIterator[bytes]: ...


@dataclass(slots=True)
class LiveStats:
    """What a live stream generated, filled in as it goes (read once it has ended)."""

    text: str = ""
    usage: Usage | None = None  # set when the stream completed
    compute_s: float = 0.0
    ttft_s: float | None = None  # perf_counter() of the first token
    finish_reason: str | None = None


@runtime_checkable
class LiveAnswerer(Answerer, Protocol):
    """A student that streams its answer as it generates it (see the module docstring)."""

    def live(
        self, body: dict[str, Any], ids: ReplyIds, include_usage: bool, stats: LiveStats
    ) -> AsyncIterator[bytes]: ...


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total,
    }


def completion_body(name: str, text: str, n: int, usage: Usage, ids: ReplyIds) -> bytes:
    """A `chat.completion` answering `text` in each of `n` choices."""
    return orjson.dumps(
        {
            "id": ids.id,
            "object": "chat.completion",
            "created": ids.created,
            "model": name,
            "system_fingerprint": "insource-student",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": _usage_json(usage),
        }
    )


class ChunkWriter:
    """Renders the `chat.completion.chunk` SSE events of a student's answer (`include_usage`: every chunk
    carries `"usage": null` and a last chunk the usage, as OpenAI does)."""

    def __init__(self, name: str, ids: ReplyIds, include_usage: bool) -> None:
        self.base = {
            "id": ids.id,
            "object": "chat.completion.chunk",
            "created": ids.created,
            "model": name,
            "system_fingerprint": "insource-student",
        }
        self.include_usage = include_usage
        self.extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        return b"data: " + orjson.dumps({**self.base, "choices": choices, **self.extra, **more}) + b"\n\n"

    def delta(self, delta: dict[str, Any], index: int = 0, finish: str | None = None) -> bytes:
        return self.chunk([{"index": index, "delta": delta, "finish_reason": finish}])

    def end(self, usage: Usage) -> bytes:
        """The usage chunk (when asked for) and `[DONE]`."""
        tail = self.chunk([], usage=_usage_json(usage)) if self.include_usage else b""
        return tail + b"data: [DONE]\n\n"


async def completion_events(
    name: str,
    text: str,
    n: int,
    usage: Usage,
    ids: ReplyIds,
    include_usage: bool,
    pieces: tuple[str, ...] = (),
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed `chat.completion.chunk` answer: `text` in one content chunk per piece of
    `pieces` when they spell it (a generative student's tokens), else in one content chunk, per choice."""
    out = ChunkWriter(name, ids, include_usage)
    parts = pieces if pieces and "".join(pieces) == text else (text,)
    for i in range(n):
        yield out.delta({"role": "assistant", "content": ""}, i)
        for part in parts:
            yield out.delta({"content": part}, i)
        yield out.delta({}, i, "stop")
    yield out.end(usage)
