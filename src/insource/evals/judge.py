"""`insource eval --metric judge`: the teacher grades each of the student's answers against its own, asked in both
orders (`routing/judge.py`), through the gateway's configured providers.

The teacher is the model alias the task's callers used most (from the usage records), else the only alias in the
config. Each judge request is metered like an audit at serving time: a usage record with endpoint `audit` (spend,
not a caller's request; `insource spend` shows it under audits), tenant `insource` and key `eval`. One small
judge request goes first, before any answer is generated: when no target of the alias answers it, eval stops
with a clear error at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from insource.config import Config
from insource.errors import InsourceError, NotReady
from insource.metering.prices import ModelPrice, resolve_prices
from insource.metering.usage import Usage, cost_usd, parse_usage
from insource.providers import Provider, build_providers
from insource.routing.judge import judge_request, orders, verdict
from insource.store import open_store
from insource.store.usage_queries import task_teacher_model

CONCURRENCY = 8
EVAL_TENANT, EVAL_KEY = "insource", "eval"


@dataclass
class JudgeSpend:
    """What judging cost: requests sent (two per answer) and their metered cost."""

    requests: int = 0
    cost_usd: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)


def teacher_alias(cfg: Config, task: str) -> str:
    """The model alias that teaches `task`; NotReady when none can be told."""
    store = open_store(cfg)
    try:
        alias = task_teacher_model(store, task)
    finally:
        store.close()
    if alias in cfg.models:
        return str(alias)
    if len(cfg.models) == 1:
        return next(iter(cfg.models))
    raise NotReady(
        f"the judge metric asks the task's teacher, but no model alias in the config teaches {task!r} "
        f"(no requests of the task recorded; the config has {len(cfg.models)} aliases): "
        "use --metric json|exact|similarity"
    )


class TeacherJudge:
    """Asks the alias's targets (in order, the next when one fails) and meters each request."""

    def __init__(self, cfg: Config, task: str, alias: str) -> None:
        self.task, self.alias = task, alias
        self.providers: dict[str, Provider] = build_providers(cfg)
        self.targets = [t.partition(":")[::2] for t in cfg.models[alias].targets]
        self.price: ModelPrice | None = resolve_prices(cfg).get(alias)
        self.spend = JudgeSpend()
        self.gate = asyncio.Semaphore(CONCURRENCY)

    async def ask(self, request: dict[str, Any]) -> str | None:
        failure: InsourceError | None = None
        for provider_name, model in self.targets:
            provider = self.providers.get(provider_name)
            if provider is None:
                continue
            started, wall = time.time(), time.perf_counter()
            try:
                async with self.gate:
                    resp = await provider.complete(model, {**request, "model": model})
            except InsourceError as exc:
                failure = exc
                continue
            self._meter(started, wall, f"{provider_name}:{model}", parse_usage(resp.data.get("usage")) or Usage())
            choices = resp.data.get("choices") or [{}]
            return str(((choices[0] or {}).get("message") or {}).get("content") or "")
        why = failure.message if failure is not None else "no configured provider"
        raise NotReady(f"the judge metric needs the teacher {self.alias!r}, which could not be reached: {why}")

    def _meter(self, ts: float, wall: float, served_by: str, usage: Usage) -> None:
        cost = cost_usd(usage, self.price) if self.price is not None else 0.0
        self.spend.requests += 1
        self.spend.cost_usd += cost
        rid = "req_" + uuid.uuid4().hex
        self.spend.rows.append(
            {
                "id": rid,
                "request_id": rid,
                "ts": ts,
                "tenant": EVAL_TENANT,
                "key_id": EVAL_KEY,
                "endpoint": "audit",
                "model": self.alias,
                "served_by": served_by,
                "task": self.task,
                "stream": 0,
                "status": 200,
                "error_code": None,
                "prompt_tokens": usage.prompt_tokens,
                "cached_tokens": usage.cached_tokens,
                "completion_tokens": usage.completion_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "cost_usd": cost,
                "cost_avoided_usd": 0.0,
                "latency_ms": (time.perf_counter() - wall) * 1000.0,
                "ttft_ms": None,
                "attempts": 1,
            }
        )

    async def grade(self, messages: Any, student: str, teacher: str) -> bool:
        replies = await asyncio.gather(*(self.ask(judge_request(messages, a, b)) for a, b in orders(teacher, student)))
        return verdict(list(replies))

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


async def _grade_all(judge: TeacherJudge, chats: list[list[dict[str, str]]], answers: list[str]) -> list[bool]:
    jobs = [
        (chat[:-1], answer, str(chat[-1].get("content") or "")) for chat, answer in zip(chats, answers, strict=True)
    ]
    try:
        if not jobs:
            return []
        first = await judge.grade(*jobs[0])  # alone: an unreachable teacher stops eval here
        rest = await asyncio.gather(*(judge.grade(*job) for job in jobs[1:]))
        return [first, *rest]
    finally:
        await judge.close()


def _write(cfg: Config, rows: list[dict[str, Any]]) -> None:
    if rows:
        store = open_store(cfg)
        try:
            store.insert_many("usage", rows)
        finally:
            store.close()


def probe_teacher(cfg: Config, task: str, alias: str) -> JudgeSpend:
    """One small judge request before any answer is generated: a teacher that cannot be reached stops eval at
    once (NotReady), not after minutes of generation. Metered like the others."""
    judge = TeacherJudge(cfg, task, alias)

    async def ask() -> None:
        try:
            await judge.ask(judge_request([{"role": "user", "content": "2+2?"}], "4", "4"))
        finally:
            await judge.close()

    try:
        asyncio.run(ask())
    finally:
        _write(cfg, judge.spend.rows)
    return judge.spend


def judge_answers(
    cfg: Config, task: str, alias: str, chats: list[list[dict[str, str]]], answers: list[str]
) -> tuple[list[bool], JudgeSpend]:
    """The verdict of the teacher `alias` (`teacher_alias`) on each answer (both orders must say EQUIVALENT),
    and what judging cost (metered: its usage records are written as audits)."""
    judge = TeacherJudge(cfg, task, alias)
    try:
        verdicts = asyncio.run(_grade_all(judge, chats, answers))
    finally:
        _write(cfg, judge.spend.rows)
    return verdicts, judge.spend
