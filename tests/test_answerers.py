"""The router's decision is a value: `InsourcingRouter.route` returns a `Routing` (who answers, which comparison
follows) from a student `Answerer`'s reply and the task's policy, and the teacher is never its business.

Driven with a real config, a real SQLite store and writer, and a scripted answerer in place of a trained one (the
protocol a served generative student implements too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from insource.config import parse_config
from insource.metering.usage import Usage
from insource.routing.policy import RoutePolicy
from insource.service.answerers import Answerer, ReplyIds, StudentReply, completion_body, completion_events
from insource.service.insourcing import TEACHER, InsourcingRouter
from insource.service.keys import KeyInfo
from insource.service.request import RequestFacts
from insource.store import open_store
from insource.store.writer import BatchWriter

IDS = ReplyIds("chatcmpl-test", 1_700_000_000)
KEY = KeyInfo("key_t", "acme", None, None, None, None, capture=None, revoked=False)


def facts(task: str) -> RequestFacts:
    return RequestFacts(KEY, "chat", id="req_test", ts=1_700_000_000.0, model="gpt-4o-mini", task=task)


BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "where is my card?"}]}


class Scripted:
    """An `Answerer` whose confidence is set by the test (or that fails, when `fail` is set)."""

    def __init__(self, name: str, confidence: float, fail: bool = False) -> None:
        self.name, self.confidence, self.fail = name, confidence, fail
        self.calls = 0

    async def complete(self, body: dict[str, Any], ids: ReplyIds) -> StudentReply:
        self.calls += 1
        if self.fail:
            raise RuntimeError("student down")
        usage = Usage(10, 0, 1, 0)
        return StudentReply("card_lost", self.confidence, completion_body(self.name, "card_lost", 1, usage, ids), usage)

    def stream(
        self, body: dict[str, Any], reply: StudentReply, ids: ReplyIds, include_usage: bool
    ) -> AsyncIterator[bytes]:
        return completion_events(self.name, reply.text, 1, reply.usage, ids, include_usage)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[InsourcingRouter]:
    cfg = parse_config(
        {
            "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {"gpt-4o-mini": {"targets": ["up:gpt-4o-mini"]}},
        },
        tmp_path,
    )
    store = open_store(cfg)
    writer = BatchWriter(store, tmp_path / "spool")
    made = InsourcingRouter(cfg, store, writer)
    yield made
    made.pool.close()
    writer.close()


def route_with(router: InsourcingRouter, policy: RoutePolicy, student: Scripted) -> Any:
    router.policies = {policy.task: policy}
    router.pool._answerers[policy.model] = student  # type: ignore[assignment]
    return asyncio.run(router.route(facts(policy.task), dict(BODY)))


def test_scripted_student_is_an_answerer() -> None:
    student: Answerer = Scripted("intent@v1", 0.9)  # mypy checks the protocol here
    assert student.name == "intent@v1"


def test_cascade_serves_a_confident_student(router: InsourcingRouter) -> None:
    student = Scripted("intent@v1", 0.95)
    routing = route_with(router, RoutePolicy("intent", "intent@v1", "cascade", threshold=0.8), student)
    assert routing.student is student and routing.compare is None
    assert routing.reply.text == "card_lost" and b'"id":"chatcmpl-test"' in routing.reply.body


def test_cascade_sends_an_unsure_student_to_the_teacher(router: InsourcingRouter) -> None:
    routing = route_with(
        router, RoutePolicy("intent", "intent@v1", "cascade", threshold=0.8), Scripted("intent@v1", 0.5)
    )
    assert routing.student is None and routing.compare is None and routing.asked is not None


def test_full_mode_with_audits_says_so(router: InsourcingRouter) -> None:
    student = Scripted("intent@v1", 0.1)
    routing = route_with(router, RoutePolicy("intent", "intent@v1", "full", audit_rate=1.0), student)
    assert routing.student is student and routing.compare == "audit" and routing.policy.task == "intent"


def test_shadow_keeps_the_teacher_and_the_reply_to_compare(router: InsourcingRouter) -> None:
    routing = route_with(router, RoutePolicy("intent", "intent@v1", "shadow"), Scripted("intent@v1", 0.99))
    assert routing.student is None and routing.compare == "shadow" and routing.reply.text == "card_lost"


def test_a_failing_student_is_counted_and_the_teacher_answers(router: InsourcingRouter) -> None:
    routing = route_with(router, RoutePolicy("intent", "intent@v1", "full"), Scripted("intent@v1", 0.9, fail=True))
    assert routing.student is None and routing.compare is None and router.failures == {"intent": 1}
    assert routing.asked is not None and routing.asked.error == "student_failed"  # its trace span


def test_requests_a_classifier_cannot_honour_never_ask_the_student(router: InsourcingRouter) -> None:
    student = Scripted("intent@v1", 0.99)
    router.policies = {"intent": RoutePolicy("intent", "intent@v1", "full")}
    router.pool._answerers["intent@v1"] = student  # type: ignore[assignment]
    body = {**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert asyncio.run(router.route(facts("intent"), body)) == TEACHER
    assert student.calls == 0


def test_the_router_holds_no_teacher() -> None:
    """The router cannot call the teacher: it has no providers, upstreams or worker state to call it with."""
    import inspect

    import insource.service.insourcing as module

    source = inspect.getsource(module)
    for name in ("upstreams", "Upstreams", "providers", "WorkerState", "finish(", "orjson"):
        assert name not in source, name
