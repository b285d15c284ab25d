"""Use case: embeddings. admit → the model's targets → meter (no routing, no capture)."""

from __future__ import annotations

import asyncio

from insource.errors import InsourceError
from insource.metering.usage import Usage, estimate_prompt_tokens, parse_usage
from insource.service.admission import admit, model_name, parse_body, take_task, validate_embeddings
from insource.service.chat import answered, ended
from insource.service.keys import KeyInfo
from insource.service.request import NOT_ADMITTED, Reply, RequestFacts, arrive
from insource.service.upstream import SERVED_BY, CallTrail
from insource.service.worker_state import WorkerState


async def embeddings(
    gw: WorkerState,
    key: KeyInfo,
    raw: bytes,
    header_task: str | None,
    path_model: str | None = None,
    request_id: str | None = None,
    from_caller: bool = False,
) -> Reply:
    arrival = arrive(key, "embeddings", request_id, from_caller)
    facts: RequestFacts | None = None
    admission, trail = NOT_ADMITTED, CallTrail()
    model = None
    try:
        body = parse_body(raw, path_model)
        model = model_name(body)
        facts = arrival.facts(model, take_task(body, header_task))
        validate_embeddings(body)
        facts, admission, _ = await admit(gw, facts, body, len(raw))
        resp = await gw.upstreams.call(facts, trail, facts.model or "", lambda p, m: p.embed(m, body))
    except InsourceError as exc:
        gw.finish(facts or arrival.facts(model), ended(trail, exc.status, exc.code), admission)
        raise
    except asyncio.CancelledError:
        gw.finish(facts or arrival.facts(model), ended(trail, 499, "cancelled"), admission)
        raise
    ttft_ms = facts.elapsed_ms()
    usage = parse_usage(resp.data.get("usage")) or Usage(estimate_prompt_tokens(len(raw)), 0, 0, 0)
    gw.finish(facts, answered(trail, usage, ttft_ms), admission)
    return Reply(resp.body, {SERVED_BY: trail.served_by or ""})
