"""Use case: chat completions, plain and streamed. admit → route → answer (teacher or student) → meter →
capture, and the audit that reuses the same teacher call.

The router (`service/insourcing.py`) says who answers (`Routing`); this module carries that out. There is one
teacher call (`_teacher_completion`, used by the caller's request and by audits), one student path
(`_serve_student`), one relay for streams, and `WorkerState.finish` builds every usage record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from insource.capture.record import CaptureRaw
from insource.errors import InsourceError, UpstreamError, UpstreamTimeout
from insource.metering.usage import Usage, cost_usd, estimate_prompt_tokens, parse_usage
from insource.providers import Provider, UpstreamResponse
from insource.routing.policy import RoutePolicy
from insource.routing.tokens import completion_tokens, prompt_tokens
from insource.service import response_cache as cache
from insource.service.admission import admit, model_name, parse_body, take_task, validate_chat
from insource.service.answerers import LiveAnswerer, LiveStats
from insource.service.insourcing import Routing
from insource.service.judging import judge
from insource.service.keys import KeyInfo
from insource.service.request import (
    NOT_ADMITTED,
    Admission,
    Attempt,
    Outcome,
    Reply,
    RequestFacts,
    StreamReply,
    arrive,
    facts_for,
)
from insource.service.streams import StreamAccumulator, output_of
from insource.service.upstream import SERVED_BY, CallTrail, warn_upstream
from insource.service.worker_state import WorkerState

STUDENT_FAILED = "student_failed"  # the usage record's error_code when the teacher answered for a failed student
__all__ = ["SERVED_BY", "Reply", "StreamReply", "chat_completion", "gone", "refused"]


def ended(trail: CallTrail, status: int, code: str | None) -> Outcome:
    """The outcome of a request that ended without an answer (refused, failed, cancelled, disconnected)."""
    return Outcome(
        status, code, served_by=trail.served_by, provider=trail.provider, attempts=trail.attempts, spans=trail.spans
    )


def answered(trail: CallTrail, usage: Usage, ttft_ms: float, status: int = 200, code: str | None = None) -> Outcome:
    """The outcome of a request a teacher target answered (`status` says whether a stream completed)."""
    return Outcome(
        status,
        code,
        usage,
        trail.served_by,
        trail.provider,
        trail.upstream_model,
        trail.attempts,
        ttft_ms,
        0.0,
        0.0,
        trail.spans,
    )


def _capture(
    gw: WorkerState,
    facts: RequestFacts,
    outcome: Outcome,
    body: dict[str, Any],
    output: str | None,
    response: dict[str, Any] | None,
    finish: str | None,
) -> CaptureRaw | None:
    consent, redact = gw.capture_policy(facts.key)
    if not consent:
        return None
    provider = gw.upstreams.providers.get(outcome.provider or "")
    return CaptureRaw(
        id=facts.id,
        ts=facts.ts,
        tenant=facts.key.tenant,
        key_id=facts.key.id,
        task=facts.task,
        model=facts.model or "",
        provider=outcome.provider,
        upstream_model=outcome.upstream_model,
        served_by=outcome.served_by or "",
        terms=provider.config.terms if provider else "in-house",
        consent=True,
        redact=redact,
        redactors=tuple(gw.cfg.capture.redactors),
        request=body,
        output=output,
        response=response,
        upstream_version=(response or {}).get("model"),
        finish_reason=finish,
        status=outcome.status,
    )


async def chat_completion(
    gw: WorkerState,
    key: KeyInfo,
    raw: bytes,
    header_task: str | None,
    path_model: str | None = None,
    request_id: str | None = None,
    from_caller: bool = False,
) -> Reply | StreamReply:
    arrival = arrive(key, "chat", request_id, from_caller)
    facts: RequestFacts | None = None
    admission, trail = NOT_ADMITTED, CallTrail()
    model, stream = None, False
    try:
        body = parse_body(raw, path_model)
        model, stream = model_name(body), body.get("stream") is True
        task = take_task(body, header_task)
        if task is None and gw.assigned:  # untagged: a template assigned to a task may name it
            task = gw.assigned.task_for(body.get("messages"))
        facts = arrival.facts(model, task, stream)
        validate_chat(body)
        facts, admission, _ = await admit(gw, facts, body, len(raw))
        ckey = cache.cache_key(gw.cfg, facts, body) if gw.cache is not None else None
        if ckey is not None:
            hit = await _from_cache(gw, facts, admission, body, ckey)
            if hit is not None:
                return hit
        routing = await gw.router.route(facts, body)
        trail.spans = routing.spans() if gw.tracing is not None else None
        if routing.student is not None and routing.reply is None:
            return _miss(ckey, await _stream_live(gw, facts, admission, body, routing))
        if routing.student is not None:
            return _miss(ckey, _serve_student(gw, facts, admission, body, routing, trail.spans))
        if facts.stream:
            return _miss(ckey, await _open_stream(gw, facts, admission, trail, body, routing, ckey))
        return _miss(ckey, await _complete(gw, facts, admission, trail, body, routing, ckey))
    except InsourceError as exc:
        gw.finish(facts or arrival.facts(model, None, stream), ended(trail, exc.status, exc.code), admission)
        raise
    except asyncio.CancelledError:  # e.g. shutdown's grace period ran out: still metered
        gw.finish(facts or arrival.facts(model, None, stream), ended(trail, 499, "cancelled"), admission)
        raise


# -- the teacher answers -----------------------------------------------------------------------------------------
async def _teacher_completion(
    gw: WorkerState, facts: RequestFacts, trail: CallTrail, body: dict[str, Any]
) -> tuple[UpstreamResponse, Outcome]:
    """The one call of the model's targets for a whole (non-streamed) completion, and its outcome."""
    resp = await gw.upstreams.call(facts, trail, facts.model or "", lambda p, m: p.complete(m, body))
    ttft_ms = facts.elapsed_ms()
    usage = parse_usage(resp.data.get("usage")) or Usage(estimate_prompt_tokens(len(resp.body)), 0, 0, 0)
    return resp, answered(trail, usage, ttft_ms)


async def _complete(
    gw: WorkerState,
    facts: RequestFacts,
    admission: Admission,
    trail: CallTrail,
    body: dict[str, Any],
    routing: Routing,
    key: str | None,
) -> Reply:
    resp, outcome = await _teacher_completion(gw, facts, trail, body)
    if routing.student_failed:
        outcome = outcome._replace(error_code=STUDENT_FAILED)
    output, finish = output_of(resp.data)
    gw.finish(facts, outcome, admission, _capture(gw, facts, outcome, body, output, resp.data, finish))
    if key is not None and gw.cache is not None:
        gw.cache.put(key, resp.body)
    _compare_shadow(gw, facts, body, routing, output)
    return Reply(resp.body, {SERVED_BY: outcome.served_by or ""})


# -- the response cache answers ----------------------------------------------------------------------------------
async def _from_cache(
    gw: WorkerState, facts: RequestFacts, admission: Admission, body: dict[str, Any], key: str
) -> Reply | StreamReply | None:
    """Answer from the response cache when an entry is there (`response_cache.py`)."""
    assert gw.cache is not None
    raw = await gw.cache.get(key)
    if raw is None:
        return None
    data = orjson.loads(raw)
    gw.finish(facts, cache.meter_hit(facts, data, gw.prices.get(facts.model or "")), admission)
    headers = {SERVED_BY: cache.SERVED_BY_CACHE, cache.CACHE_HEADER: "hit"}
    if facts.stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return StreamReply(cache.replay_stream(data, include_usage), headers)
    return Reply(raw, headers)


def _miss(key: str | None, reply: Reply | StreamReply) -> Reply | StreamReply:
    if key is not None:
        reply.headers.setdefault(cache.CACHE_HEADER, "miss")
    return reply


def _compare_shadow(
    gw: WorkerState, facts: RequestFacts, body: dict[str, Any], routing: Routing, teacher_output: str | None
) -> None:
    """Shadow mode: the teacher's answer to the caller is compared with the student's."""
    if routing.compare == "shadow" and routing.reply is not None and routing.policy is not None:
        reply = routing.reply
        _compare(gw, facts, body, routing.policy, reply.text, teacher_output, reply.confidence, reply.catch_all)


def _compare(
    gw: WorkerState,
    facts: RequestFacts,
    body: dict[str, Any],
    policy: RoutePolicy,
    student: str,
    teacher: str | None,
    confidence: float | None,
    catch_all: tuple[float, str] | None = None,
) -> None:
    """Record one comparison; under the `judge` metric the teacher grades it first, in the background.
    `catch_all`: a classifier's probability of its catch-all label, and the label (a calibration sample)."""
    if teacher is not None and gw.router.metric(policy) == "judge":
        gw.router.spawn(_judge(gw, facts, body, policy, (student, confidence), teacher))
    else:
        gw.router.record(policy, student, teacher, confidence, catch_all=catch_all)


async def _judge(
    gw: WorkerState,
    facts: RequestFacts,
    body: dict[str, Any],
    policy: RoutePolicy,
    student: tuple[str, float | None],
    teacher: str,
) -> None:
    """The teacher (the caller's model alias) grades the student's answer in both orders; each judge request is
    metered as an audit. When a judge request fails, no comparison is recorded."""

    async def ask(request: dict[str, Any]) -> str | None:
        audit = RequestFacts(facts.key, "audit", model=facts.model, task=facts.task, request_id=facts.trace_id)
        trail = CallTrail()
        try:
            resp, outcome = await _teacher_completion(gw, audit, trail, {**request, "model": facts.model})
        except InsourceError as exc:
            gw.finish(audit, ended(trail, exc.status, exc.code))
            raise
        gw.finish(audit, outcome)
        return output_of(resp.data)[0]

    try:
        agree = await judge(ask, body.get("messages"), student[0], teacher)
    except InsourceError:
        return
    gw.router.record(policy, student[0], teacher, student[1], verdict=agree)


async def _open_stream(
    gw: WorkerState,
    facts: RequestFacts,
    admission: Admission,
    trail: CallTrail,
    body: dict[str, Any],
    routing: Routing,
    key: str | None,
) -> StreamReply:
    raw_options = body.get("stream_options")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    acc = StreamAccumulator(client_wants_usage=options.get("include_usage") is True)
    forwarded = {**body, "stream_options": {**options, "include_usage": True}}

    async def open_one(provider: Provider, model: str) -> tuple[Any, AsyncIterator[bytes], bytes | None]:
        stream = await provider.stream(model, forwarded)
        events = stream.__aiter__()
        try:
            async with asyncio.timeout(provider.config.ttft_timeout_s):
                first = await anext(events, None)
        except TimeoutError:
            await stream.aclose()
            raise UpstreamTimeout(f"upstream '{provider.name}' sent no first token in time") from None
        except BaseException:
            await stream.aclose()
            raise
        return stream, events, first

    stream, events, first = await gw.upstreams.call(facts, trail, facts.model or "", open_one)
    opened = _Opened(stream, events, first, acc, facts.elapsed_ms(), key)
    relay = _relay(gw, facts, admission, trail, routing, forwarded, opened)
    return StreamReply(relay, {SERVED_BY: trail.served_by or ""})


@dataclasses.dataclass(frozen=True, slots=True)
class _Opened:
    """An upstream stream whose first event arrived (`first`), and what reads it."""

    stream: Any
    events: AsyncIterator[bytes]
    first: bytes | None
    acc: StreamAccumulator
    ttft_ms: float
    cache_key: str | None  # where the completed answer goes in the response cache (None: not cached)


async def _relay(
    gw: WorkerState,
    facts: RequestFacts,
    admission: Admission,
    trail: CallTrail,
    routing: Routing,
    body: dict[str, Any],
    opened: _Opened,
) -> AsyncIterator[bytes]:
    """Relay upstream events as they come. Whatever happens (even a client disconnect), meter once: at [DONE],
    before the event that carries it leaves (a client that has it has its whole answer), else at the end."""
    acc = opened.acc
    status, code = 499, None  # until the stream completes
    try:
        async for event in _all_events(opened):
            out = acc.feed(event)
            if acc.done:
                _meter_stream(gw, facts, admission, trail, routing, body, opened, 200, None)
            if out is not None:
                yield out
            if acc.done:  # [DONE] ends the stream, whatever the upstream does with its connection
                break
        status = 200
    except UpstreamError as exc:
        status, code = exc.status, exc.code
        warn_upstream(facts, trail, trail.provider or "", trail.upstream_model or "", exc)
        yield b"data: " + exc.body_bytes() + b"\n\n"
    finally:
        with contextlib.suppress(Exception):
            await opened.stream.aclose()
        if not acc.done:  # else metered at [DONE]
            _meter_stream(gw, facts, admission, trail, routing, body, opened, status, code)
        if status == 200:
            if opened.cache_key is not None and gw.cache is not None:
                gw.cache.put(opened.cache_key, cache.stream_entry(acc.response(), acc.usage))
            _compare_shadow(gw, facts, body, routing, acc.output())


async def _all_events(opened: _Opened) -> AsyncIterator[bytes]:
    """The upstream's events: the first one, already read, then the rest."""
    if opened.first is not None:
        yield opened.first
    async for event in opened.events:
        yield event


def _meter_stream(
    gw: WorkerState,
    facts: RequestFacts,
    admission: Admission,
    trail: CallTrail,
    routing: Routing,
    body: dict[str, Any],
    opened: _Opened,
    status: int,
    code: str | None,
) -> None:
    """The usage record (and capture) of a relayed stream, from what was relayed."""
    acc = opened.acc
    if code is None and routing.student_failed:
        code = STUDENT_FAILED
    # metered from what was relayed when the upstream sent no usage: it billed what it generated
    usage = acc.usage or Usage(estimate_prompt_tokens(len(str(body.get("messages")))), 0, acc.chunks, 0)
    outcome = answered(trail, usage, opened.ttft_ms, status, code)
    capture = (
        _capture(gw, facts, outcome, body, acc.output(), acc.response(), acc.finish_reason) if status == 200 else None
    )
    gw.finish(facts, outcome, admission, capture)


# -- a student answers -------------------------------------------------------------------------------------------
def _student_outcome(
    gw: WorkerState,
    facts: RequestFacts,
    name: str,
    usage: Usage,
    compute_s: float,
    ttft_ms: float | None,
    spans: list[Attempt] | None,
    status: int = 200,
    code: str | None = None,
) -> Outcome:
    """A student's answer priced at its serving cost, the teacher's price recorded as avoided (when served)."""
    price = gw.prices.get(facts.model or "")
    avoided = cost_usd(usage, price) if price and status == 200 else 0.0
    cost = compute_s * gw.cfg.inhouse.cpu_usd_per_hour / 3600.0
    return Outcome(status, code, usage, name, ttft_ms=ttft_ms, cost_usd=cost, cost_avoided_usd=avoided, spans=spans)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _serve_student(
    gw: WorkerState,
    facts: RequestFacts,
    admission: Admission,
    body: dict[str, Any],
    routing: Routing,
    spans: list[Attempt] | None,
) -> Reply | StreamReply:
    """Serve the student's reply (priced at its serving cost, the teacher's price recorded as avoided); an audit
    follows in the background when the routing says so."""
    student, reply = routing.student, routing.reply
    assert student is not None and reply is not None
    outcome = _student_outcome(gw, facts, student.name, reply.usage, reply.compute_s, facts.elapsed_ms(), spans)
    if routing.compare == "audit" and routing.policy is not None:
        gw.router.spawn(_audit(gw, facts, body, routing.policy, (reply.text, reply.confidence)))
    gw.finish(facts, outcome, admission)
    headers = {SERVED_BY: student.name}
    if facts.stream:
        return StreamReply(student.stream(body, reply, facts.reply_ids, _include_usage(body)), headers)
    return Reply(reply.body, headers)


async def _stream_live(
    gw: WorkerState, facts: RequestFacts, admission: Admission, body: dict[str, Any], routing: Routing
) -> StreamReply:
    """A generative student's answer streamed as it is generated (`LiveAnswerer.live`). When it fails before
    its first token (it died, hung past its timeout, cannot start) the teacher answers the stream instead."""
    student, policy = routing.student, routing.policy
    assert isinstance(student, LiveAnswerer) and policy is not None
    stats = LiveStats()
    events = student.live(body, facts.reply_ids, _include_usage(body), stats)
    started = time.perf_counter()
    try:
        first = await anext(events)
    except Exception as exc:  # any student failure: counted, and the teacher answers
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]
        gw.router.student_failed(policy, exc)
        failed = Attempt("insource", student.name, started, time.perf_counter(), 500, STUDENT_FAILED, True)
        trail = CallTrail()
        trail.spans = [failed] if gw.tracing is not None else None
        return await _open_stream(gw, facts, admission, trail, body, Routing(asked=failed), None)
    relay = _relay_live(gw, facts, admission, body, routing, events, first, stats)
    return StreamReply(relay, {SERVED_BY: student.name})


async def _relay_live(
    gw: WorkerState,
    facts: RequestFacts,
    admission: Admission,
    body: dict[str, Any],
    routing: Routing,
    events: AsyncIterator[bytes],
    first: bytes,
    stats: LiveStats,
) -> AsyncIterator[bytes]:
    """Relay a live student stream; whatever happens (even a client disconnect), meter once. A student that
    breaks after its first token ends the stream with an error event (counted as a student failure)."""
    assert routing.student is not None and routing.policy is not None
    status, code = 499, None
    try:
        yield first
        async for event in events:
            yield event
        status = 200
    except Exception as exc:  # the student broke mid-answer: the caller already has part of it
        gw.router.student_failed(routing.policy, exc)
        status, code = 502, STUDENT_FAILED
        yield b"data: " + UpstreamError("the in-house model failed mid-answer").body_bytes() + b"\n\n"
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]
        usage = stats.usage or Usage(prompt_tokens(body.get("messages")), 0, completion_tokens(stats.text), 0)
        ttft = (stats.ttft_s - facts.t0) * 1000.0 if stats.ttft_s is not None else None
        name = routing.student.name
        gw.finish(facts, _student_outcome(gw, facts, name, usage, stats.compute_s, ttft, None, status, code), admission)
        if status == 200 and routing.compare == "audit":
            gw.router.spawn(_audit(gw, facts, body, routing.policy, (stats.text, None)))


async def _audit(
    gw: WorkerState, facts: RequestFacts, body: dict[str, Any], policy: RoutePolicy, student: tuple[str, float | None]
) -> None:
    """The teacher answers the same request too (its own usage record, endpoint 'audit': spend, not a caller's
    request) and its answer is compared with the student's (its answer and confidence)."""
    audit = RequestFacts(facts.key, "audit", model=facts.model, task=facts.task, request_id=facts.trace_id)
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    trail = CallTrail()
    try:
        resp, outcome = await _teacher_completion(gw, audit, trail, plain)
    except InsourceError as exc:
        gw.finish(audit, ended(trail, exc.status, exc.code))
        return
    gw.finish(audit, outcome)
    _compare(gw, facts, body, policy, student[0], output_of(resp.data)[0], student[1])


# -- requests that ended before their body was read --------------------------------------------------------------
def refused(
    gw: WorkerState,
    key: KeyInfo,
    kind: str,
    exc: InsourceError,
    request_id: str | None = None,
    from_caller: bool = False,
) -> None:
    """Meter a request refused after authentication before its body could be read (e.g. too large)."""
    gw.finish(facts_for(key, kind, request_id, from_caller), Outcome(exc.status, exc.code))


def gone(gw: WorkerState, key: KeyInfo, kind: str, request_id: str | None = None, from_caller: bool = False) -> None:
    """Meter a request whose client disconnected after authentication, before its body arrived (499)."""
    gw.finish(facts_for(key, kind, request_id, from_caller), Outcome(499))
