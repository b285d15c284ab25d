"""Use cases: chat completions (plain and streamed) and embeddings. route → call → meter → capture."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from insource.capture.record import CaptureRaw
from insource.errors import InsourceError, UpstreamError, UpstreamTimeout
from insource.metering.usage import Usage, estimate_prompt_tokens, parse_usage
from insource.providers import Provider
from insource.service import response_cache as cache
from insource.service.admission import (
    admit,
    model_name,
    parse_body,
    take_task,
    validate_chat,
    validate_embeddings,
)
from insource.service.context import RequestContext, context_for
from insource.service.gateway import Gateway
from insource.service.keys import KeyInfo
from insource.service.streams import StreamAccumulator, output_of
from insource.service.upstream import SERVED_BY, warn_upstream


@dataclass(slots=True)
class Reply:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


@dataclass(slots=True)
class StreamReply:
    events: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def _fail(gw: Gateway, ctx: RequestContext, exc: InsourceError) -> None:
    ctx.status, ctx.error_code = exc.status, exc.code
    gw.finish(ctx)


def _cancelled(gw: Gateway, ctx: RequestContext) -> None:
    """The request's task was cancelled before an answer (e.g. shutdown's grace period ran out): still metered."""
    ctx.status, ctx.error_code = 499, "cancelled"
    gw.finish(ctx)


def _capture(
    gw: Gateway,
    ctx: RequestContext,
    body: dict[str, Any],
    output: str | None,
    response: dict[str, Any] | None,
    finish: str | None,
) -> CaptureRaw | None:
    consent, redact = gw.capture_policy(ctx.key)
    if not consent:
        return None
    provider = gw.upstreams.providers.get(ctx.provider or "")
    return CaptureRaw(
        id=ctx.id,
        ts=ctx.ts,
        tenant=ctx.key.tenant,
        key_id=ctx.key.id,
        task=ctx.task,
        model=ctx.model or "",
        provider=ctx.provider,
        upstream_model=ctx.upstream_model,
        served_by=ctx.served_by or "",
        terms=provider.config.terms if provider else "in-house",
        consent=True,
        redact=redact,
        redactors=tuple(gw.cfg.capture.redactors),
        request=body,
        output=output,
        response=response,
        upstream_version=(response or {}).get("model"),
        finish_reason=finish,
        status=ctx.status,
    )


async def chat_completion(
    gw: Gateway,
    key: KeyInfo,
    raw: bytes,
    header_task: str | None,
    path_model: str | None = None,
    request_id: str | None = None,
    from_caller: bool = False,
) -> Reply | StreamReply:
    ctx = context_for(key, "chat", request_id, from_caller)
    try:
        body = parse_body(raw, path_model)
        ctx.model = model_name(body)
        ctx.stream = body.get("stream") is True
        ctx.task = take_task(body, header_task)
        if ctx.task is None and gw.assigned:  # untagged: a template assigned to a task may name it
            ctx.task = gw.assigned.task_for(body.get("messages"))
        validate_chat(body)
        await admit(gw, ctx, body, len(raw))
        cached = await _from_cache(gw, ctx, body)
        if cached is not None:
            return cached
        if gw.router is not None:
            routed = await gw.router.handle(gw, ctx, body)
            if routed is not None:
                return _miss(ctx, routed)
        if ctx.stream:
            return _miss(ctx, await _open_stream(gw, ctx, body))
        return _miss(ctx, await _complete(gw, ctx, body))
    except InsourceError as exc:
        _fail(gw, ctx, exc)
        raise
    except asyncio.CancelledError:
        _cancelled(gw, ctx)
        raise


async def _from_cache(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> Reply | StreamReply | None:
    """Answer from the response cache when the request may be and an entry is there (`response_cache.py`)."""
    if gw.cache is None:
        return None
    ctx.cache_key = cache.cache_key(gw.cfg, ctx, body)
    if ctx.cache_key is None:
        return None
    raw = await gw.cache.get(ctx.cache_key)
    if raw is None:
        return None
    data = orjson.loads(raw)
    cache.meter_hit(ctx, data, gw.prices.get(ctx.model or ""))
    ctx.output = output_of(data)[0]
    gw.finish(ctx)
    headers = {SERVED_BY: cache.SERVED_BY_CACHE, cache.CACHE_HEADER: "hit"}
    if ctx.stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return StreamReply(cache.replay_stream(data, include_usage), headers)
    return Reply(raw, headers)


def _miss(ctx: RequestContext, reply: Reply | StreamReply) -> Reply | StreamReply:
    if ctx.cache_key is not None:
        reply.headers.setdefault(cache.CACHE_HEADER, "miss")
    return reply


async def _complete(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> Reply:
    resp = await gw.upstreams.call(ctx, ctx.model or "", lambda p, m: p.complete(m, body))
    ctx.mark_first_byte()
    ctx.usage = parse_usage(resp.data.get("usage")) or Usage(estimate_prompt_tokens(len(resp.body)), 0, 0, 0)
    output, finish = output_of(resp.data)
    ctx.output = output
    gw.finish(ctx, _capture(gw, ctx, body, output, resp.data, finish))
    if ctx.cache_key is not None and gw.cache is not None:
        gw.cache.put(ctx.cache_key, resp.body)
    return Reply(resp.body, {SERVED_BY: ctx.served_by or ""})


async def _open_stream(gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> StreamReply:
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

    stream, events, first = await gw.upstreams.call(ctx, ctx.model or "", open_one)
    ctx.mark_first_byte()
    return StreamReply(_relay(gw, ctx, forwarded, stream, events, first, acc), {SERVED_BY: ctx.served_by or ""})


async def _relay(
    gw: Gateway,
    ctx: RequestContext,
    body: dict[str, Any],
    stream: Any,
    events: AsyncIterator[bytes],
    first: bytes | None,
    acc: StreamAccumulator,
) -> AsyncIterator[bytes]:
    """Relay upstream events as they come. Whatever happens (even a client disconnect), meter once."""
    ctx.status = 499  # until the stream completes
    try:
        if first is not None:
            out = acc.feed(first)
            if out is not None:
                yield out
        async for event in events:
            out = acc.feed(event)
            if out is not None:
                yield out
            if acc.done:  # [DONE] ends the stream, whatever the upstream does with its connection
                break
        ctx.status = 200
    except UpstreamError as exc:
        ctx.status, ctx.error_code = exc.status, exc.code
        warn_upstream(ctx, ctx.provider or "", ctx.upstream_model or "", exc)
        yield b"data: " + exc.body_bytes() + b"\n\n"
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()
        if acc.usage is not None:
            ctx.usage = acc.usage
        else:  # metered from what was relayed: the upstream billed what it generated
            ctx.usage = Usage(estimate_prompt_tokens(len(str(body.get("messages")))), 0, acc.chunks, 0)
        ctx.output = acc.output()
        capture = _capture(gw, ctx, body, ctx.output, acc.response(), acc.finish_reason)
        gw.finish(ctx, capture if ctx.status == 200 else None)
        if ctx.status == 200 and ctx.cache_key is not None and gw.cache is not None:
            gw.cache.put(ctx.cache_key, cache.stream_entry(acc.response(), acc.usage))


async def embeddings(
    gw: Gateway,
    key: KeyInfo,
    raw: bytes,
    header_task: str | None,
    path_model: str | None = None,
    request_id: str | None = None,
    from_caller: bool = False,
) -> Reply:
    ctx = context_for(key, "embeddings", request_id, from_caller)
    try:
        body = parse_body(raw, path_model)
        ctx.model = model_name(body)
        ctx.task = take_task(body, header_task)
        validate_embeddings(body)
        await admit(gw, ctx, body, len(raw))
        resp = await gw.upstreams.call(ctx, ctx.model or "", lambda p, m: p.embed(m, body))
    except InsourceError as exc:
        _fail(gw, ctx, exc)
        raise
    except asyncio.CancelledError:
        _cancelled(gw, ctx)
        raise
    ctx.mark_first_byte()
    ctx.usage = parse_usage(resp.data.get("usage")) or Usage(estimate_prompt_tokens(len(raw)), 0, 0, 0)
    gw.finish(ctx)
    return Reply(resp.body, {SERVED_BY: ctx.served_by or ""})


def refused(
    gw: Gateway, key: KeyInfo, kind: str, exc: InsourceError, request_id: str | None = None, from_caller: bool = False
) -> None:
    """Meter a request refused after authentication before its body could be read (e.g. too large)."""
    _fail(gw, context_for(key, kind, request_id, from_caller), exc)


def gone(gw: Gateway, key: KeyInfo, kind: str, request_id: str | None = None, from_caller: bool = False) -> None:
    """Meter a request whose client disconnected after authentication, before its body arrived (499)."""
    ctx = context_for(key, kind, request_id, from_caller)
    ctx.status = 499
    gw.finish(ctx)
