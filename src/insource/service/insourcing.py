"""The insourcing router: per task, decide whether the owned student or the rented teacher answers.

Modes: shadow (teacher answers, student compared), canary (P% to the student), cascade (student when
confident), full (student answers, R% audited by the teacher). Agreement is recorded, and a task whose
agreement is below its floor (`routing.policy.should_roll_back`) rolls back to the teacher by itself, in any
mode. Each worker judges twice: at once on its own comparisons, and every refresh on every worker's
comparisons recorded in the store (so `--workers N` is judged on the same evidence as one worker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson

from insource.errors import InsourceError
from insource.metering.usage import Usage, cost_usd
from insource.routing.policy import Answerer, RoutePolicy, decide, needs_prediction
from insource.routing.tokens import completion_tokens, prompt_tokens
from insource.service.chat import SERVED_BY, Reply, StreamReply
from insource.service.context import RequestContext
from insource.service.gateway import Gateway
from insource.service.routes import (
    agreement_window,
    config_policies,
    judge_routes,
    load_policies,
    roll_back,
    rollback_reason,
)
from insource.service.streams import output_of
from insource.service.students import StudentPool

log = logging.getLogger("insource.router")
STUDENT_TIMEOUT_S = 2.0
NEVER_SURE = 1.01  # a cascade without a resolved threshold never lets the student answer


def needs_the_teacher(body: dict[str, Any]) -> bool:
    """What a classifier student cannot honour: tools, structured output, log probabilities, non-text output."""
    fmt = body.get("response_format")
    modalities = body.get("modalities")
    return bool(
        body.get("tools")
        or body.get("functions")
        or body.get("logprobs")
        or body.get("top_logprobs")
        or (isinstance(fmt, dict) and fmt.get("type", "text") != "text")
        or (isinstance(modalities, list) and any(m != "text" for m in modalities))
    )


class InsourcingRouter:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.configured, problems = config_policies(gw.cfg)
        for problem in problems.values():
            log.error("%s: the teacher answers this task", problem)
        self.policies: dict[str, RoutePolicy] = load_policies(gw.cfg, gw.store, self.configured)
        self.rolled_back: set[tuple[str, float]] = set()  # (task, since) this worker rolled back
        self.pool = StudentPool(gw.cfg.registry_path())
        self.outcomes: dict[str, deque[bool]] = {}
        self.failures: dict[str, int] = {}
        self.rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    async def refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                fresh = await asyncio.to_thread(self._load_and_judge)
            except Exception:  # keep the last good policies; logged
                log.exception("route refresh failed")
                continue
            for task, policy in fresh.items():
                if policy.active and (task, policy.since) in self.rolled_back:  # our rollback is being written
                    fresh[task] = policy = dataclasses.replace(policy, active=False)
                if self.policies.get(task) != policy:
                    self.outcomes.pop(task, None)
            self.policies = fresh

    def turn_off(self, task: str) -> None:
        """The teacher answers `task` from now on, on this worker (the store already says so for the others)."""
        policy = self.policies.get(task)
        if policy is not None and policy.active:
            self.policies[task] = dataclasses.replace(policy, active=False)

    def _load_and_judge(self) -> dict[str, RoutePolicy]:
        return judge_routes(self.gw.store, load_policies(self.gw.cfg, self.gw.store, self.configured))

    # -- request path ------------------------------------------------------------------------
    async def handle(self, gw: Gateway, ctx: RequestContext, body: dict[str, Any]) -> Reply | StreamReply | None:
        policy = self.policies.get(ctx.task or "")
        if policy is None or not policy.active or needs_the_teacher(body):
            return None
        draws = (self.rng.random(), self.rng.random())
        if not needs_prediction(policy, draws[0]):
            return None
        started = time.perf_counter()
        pred, threshold, serve_s = await self._predict(policy, body)
        if gw.tracing is not None:
            gw.tracing.note_student(ctx, policy.model, started, time.perf_counter(), failed=pred is None)
        decision = decide(policy, threshold, pred.confidence if pred else None, bool(pred and pred.ood), draws)
        if decision.answerer is Answerer.TEACHER:
            if pred is not None and decision.audit:
                answer = pred.answer
                ctx.on_output = lambda out: self.record(policy, answer, out)
            return None
        assert pred is not None
        if decision.audit:
            self._spawn(self._audit(ctx, body, policy, pred.answer))
        return self._answer(gw, ctx, body, policy.model, pred.answer, serve_s)

    async def _predict(self, policy: RoutePolicy, body: dict[str, Any]) -> tuple[Any, float, float]:
        """(prediction or None, threshold, CPU seconds the answer cost to compute)."""
        try:
            await self.pool.get(policy.model)
            text = self.pool.extract(policy.model, body["messages"])
            async with asyncio.timeout(STUDENT_TIMEOUT_S):
                pred, compute_s = await self.pool.predict(policy.model, text)
        except Exception as exc:  # a student failure never reaches the caller: the teacher answers
            self.failures[policy.task] = self.failures.get(policy.task, 0) + 1
            log.warning("student %s failed (%s); the teacher answers", policy.model, type(exc).__name__)
            return None, 1.0, 0.0
        threshold = policy.threshold if policy.threshold is not None else NEVER_SURE
        return pred, threshold, compute_s

    def _answer(
        self, gw: Gateway, ctx: RequestContext, body: dict[str, Any], name: str, answer: str, serve_s: float
    ) -> Reply | StreamReply:
        n = int(body.get("n") or 1)
        ctx.usage = Usage(prompt_tokens(body.get("messages")), 0, completion_tokens(answer, n), 0)
        ctx.served_by = ctx.output = None
        ctx.served_by, ctx.output = name, answer
        ctx.mark_first_byte()
        price = gw.prices.get(ctx.model or "")
        ctx.cost_avoided_usd = cost_usd(ctx.usage, price) if price else 0.0
        ctx.cost_usd = serve_s * gw.cfg.inhouse.cpu_usd_per_hour / 3600.0
        headers = {SERVED_BY: name}
        if ctx.stream:
            raw_options = body.get("stream_options")
            options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
            events = _student_stream(ctx, name, answer, n, options.get("include_usage") is True)
            gw.finish(ctx)
            return StreamReply(events, headers)
        gw.finish(ctx)
        return Reply(_student_completion(ctx, name, answer, n), headers)

    # -- audits and agreement ----------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audit(self, ctx: RequestContext, body: dict[str, Any], policy: RoutePolicy, answer: str) -> None:
        actx = RequestContext(ctx.key, "audit", model=ctx.model, task=ctx.task, request_id=ctx.request_id or ctx.id)
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        try:
            resp = await self.gw.upstreams.call(actx, actx.model or "", lambda p, m: p.complete(m, plain))
        except InsourceError as exc:
            actx.status, actx.error_code = exc.status, exc.code
            self.gw.finish(actx)
            return
        from insource.metering.usage import parse_usage

        actx.usage = parse_usage(resp.data.get("usage")) or Usage()
        actx.output = output_of(resp.data)[0]
        self.gw.finish(actx)
        self.record(policy, answer, actx.output)

    def record(self, policy: RoutePolicy, student_answer: str, teacher_output: str | None) -> None:
        agree = teacher_output is not None and student_answer.strip() == teacher_output.strip()
        self.gw.writer.submit(
            "agreements",
            {
                "id": "agr_" + uuid.uuid4().hex,
                "ts": time.time(),
                "task": policy.task,
                "model": policy.model,
                "source": "shadow" if policy.mode == "shadow" else "audit",
                "agree": int(agree),
            },
        )
        if self.policies.get(policy.task) != policy or not policy.active:  # compared under an older policy
            return
        window = self.outcomes.get(policy.task)
        if window is None:
            window = self.outcomes[policy.task] = deque(maxlen=agreement_window(policy.floor))
        window.append(agree)
        reason = rollback_reason(policy, sum(window), len(window))
        if reason is not None:
            self.policies[policy.task] = dataclasses.replace(policy, active=False)
            self.rolled_back.add((policy.task, policy.since))
            self._spawn(asyncio.to_thread(roll_back, self.gw.store, policy, reason))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.pool.close()


def _student_completion(ctx: RequestContext, name: str, answer: str, n: int) -> bytes:
    u = ctx.usage
    return orjson.dumps(
        {
            "id": "chatcmpl-" + ctx.id[4:],
            "object": "chat.completion",
            "created": int(ctx.ts),
            "model": name,
            "system_fingerprint": "insource-student",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total,
            },
        }
    )


async def _student_stream(ctx: RequestContext, name: str, answer: str, n: int, usage: bool) -> AsyncIterator[bytes]:
    base = {
        "id": "chatcmpl-" + ctx.id[4:],
        "object": "chat.completion.chunk",
        "created": int(ctx.ts),
        "model": name,
        "system_fingerprint": "insource-student",
    }
    extra = {"usage": None} if usage else {}

    def chunk(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra, **more}) + b"\n\n"

    for i in range(n):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        yield chunk([{"index": i, "delta": {"content": answer}, "finish_reason": None}])
        yield chunk([{"index": i, "delta": {}, "finish_reason": "stop"}])
    if usage:
        u = ctx.usage
        yield chunk(
            [],
            usage={"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total},
        )
    yield b"data: [DONE]\n\n"


def attach_router(gw: Gateway) -> InsourcingRouter:
    router = InsourcingRouter(gw)
    gw.router = router
    return router
