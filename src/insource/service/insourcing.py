"""The insourcing router: per task, decide whether the owned student or the rented teacher answers.

Modes: shadow (teacher answers, student compared), canary (P% to the student), cascade (student when
confident), full (student answers, R% audited by the teacher). Agreement is recorded, and a task whose
agreement is below its floor (`routing.policy.should_roll_back`) rolls back to the teacher by itself, in any
mode. Each worker judges twice: at once on its own comparisons, and every refresh on every worker's
comparisons recorded in the store (so `--workers N` is judged on the same evidence as one worker).

`InsourcingRouter.route` returns a `Routing`: a value saying who answers and which comparison follows. It asks
the student (an `Answerer`, `service/answerers.py`) for its answer and confidence, but never calls the teacher,
builds a response or meters: `service/chat.py` carries the decision out, and reports comparisons back through
`InsourcingRouter.record`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from insource.config import Config
from insource.routing.agreement import agree as agree_as
from insource.routing.policy import Answerer as Who
from insource.routing.policy import RoutePolicy, decide, needs_prediction, shifted_confidence
from insource.service.answerers import Answerer, ReplyIds, StudentReply
from insource.service.generative import GenerativePool
from insource.service.promise import AUDIT, CALIBRATION, keep_promises
from insource.service.request import Attempt, RequestFacts, time_ordered_id
from insource.service.routes import (
    agreement_window,
    config_policies,
    judge_routes,
    load_policies,
    roll_back,
    rollback_reason,
)
from insource.service.students import StudentPool
from insource.store import Store
from insource.store.writer import BatchWriter

log = logging.getLogger("insource.router")
NEVER_SURE = 1.01  # a cascade without a resolved threshold never lets the student answer
Comparison = Literal["audit", "shadow"]


@dataclass(frozen=True, slots=True)
class Routing:
    """Who answers one request, and what comparison follows.

    - `student` None: the teacher's targets (the model alias's) answer; else that student, with `reply` (None:
      a live stream, generated as it is sent: `LiveAnswerer.live`);
    - `compare` "audit": the teacher also answers (in the background) and its answer is compared with
      `reply`; "shadow": the teacher's answer to the caller is compared with `reply`; None: nothing.
    - `policy`: the route the decision was made under (comparisons count for it only while it is current).
    """

    student: Answerer | None = None
    reply: StudentReply | None = None
    compare: Comparison | None = None
    policy: RoutePolicy | None = None
    asked: Attempt | None = None  # when the student was asked, and whether it failed (for traces)

    @property
    def student_failed(self) -> bool:
        """The student was asked and failed: the teacher answers, and the usage record says so."""
        return self.asked is not None and self.asked.error is not None

    def spans(self) -> list[Attempt]:
        """The request's first trace spans: the student's prediction, when there was one."""
        return [self.asked] if self.asked is not None else []


TEACHER = Routing()


def _asked(model: str, started: float, failed: bool) -> Attempt:
    """A student's prediction as a trace span (provider "insource", its name as the model)."""
    end = time.perf_counter()
    return Attempt("insource", model, started, end, 500 if failed else 200, "student_failed" if failed else None, True)


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
    def __init__(self, cfg: Config, store: Store, writer: BatchWriter) -> None:
        self.cfg, self.store, self.writer = cfg, store, writer
        self.configured, problems = config_policies(cfg)
        for problem in problems.values():
            log.error("%s: the teacher answers this task", problem)
        self.policies: dict[str, RoutePolicy] = load_policies(cfg, store, self.configured)
        self.rolled_back: set[tuple[str, float]] = set()  # (task, since) this worker rolled back
        self.pool = StudentPool(cfg.registry_path())
        self.generative = GenerativePool(
            cfg.registry_path(), cfg.inhouse.generative_base_url, cfg.inhouse.generative_timeout_s
        )
        self.outcomes: dict[str, deque[bool]] = {}
        self.failures: dict[str, int] = {}
        self.rng = random.Random()
        self._tasks: set[asyncio.Task[Any]] = set()

    def apply(self, fresh: dict[str, RoutePolicy]) -> None:
        """Serve with `fresh` routes (on the event loop): a route this worker is rolling back stays off until the
        store says so; a changed route's recent outcomes are forgotten."""
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

    def load(self) -> dict[str, RoutePolicy]:
        """The routes as the store has them now, judged (in a thread: it reads the store)."""
        policies = judge_routes(self.store, load_policies(self.cfg, self.store, self.configured))
        return keep_promises(self.store, policies, self._classifier)  # the rollback floor first, then the promise

    def _classifier(self, model: str) -> bool:
        """Whether `model` is a classifier student: its confidences are calibrated probabilities."""
        return not self.generative.serves(model)

    # -- request path ------------------------------------------------------------------------
    async def route(self, facts: RequestFacts, body: dict[str, Any]) -> Routing:
        """Who answers this request (the body is validated and its task taken out)."""
        policy = self.policies.get(facts.task or "")
        if policy is None or not policy.active or needs_the_teacher(body):
            return TEACHER
        draws = (self.rng.random(), self.rng.random())
        if not needs_prediction(policy, draws[0]):
            return TEACHER
        generative = self.generative.serves(policy.model)
        if generative and int(body.get("n") or 1) != 1:
            return TEACHER  # one greedy answer per request: the teacher answers n > 1
        if generative and facts.stream and policy.mode in ("canary", "full"):
            live = self._live(policy, body, draws)
            if live is not None:
                return live
        student: Answerer = self.generative.get(policy.model) if generative else self.pool.answerer(policy.model)
        started = time.perf_counter()
        reply = await self._ask(student, policy, body, facts.reply_ids)
        if generative and reply is not None and reply.ood and policy.mode in ("canary", "full"):
            reply = None  # an answer it cannot serve (cut off, unparsable JSON): the teacher answers
        asked = _asked(policy.model, started, reply is None)
        if reply is not None and reply.catch_all is not None and policy.catch_all_odds != 1.0:
            p, label = reply.catch_all
            shifted = shifted_confidence(reply.confidence, p, reply.text == label, policy.catch_all_odds)
            reply = dataclasses.replace(reply, confidence=shifted)
        threshold = policy.threshold if policy.threshold is not None else NEVER_SURE
        confidence = reply.confidence if reply is not None else None
        decision = decide(policy, threshold, confidence, bool(reply and reply.ood), draws)
        if reply is None:
            return Routing(asked=asked)
        if decision.answerer is Who.TEACHER:
            if decision.audit:
                if policy.calibrating and reply.ood:  # never served, whatever its confidence: calibrates as such
                    reply = dataclasses.replace(reply, confidence=0.0)
                return Routing(reply=reply, compare="shadow", policy=policy, asked=asked)
            return Routing(asked=asked)
        return Routing(student, reply, "audit" if decision.audit else None, policy, asked)

    def _live(self, policy: RoutePolicy, body: dict[str, Any], draws: tuple[float, float]) -> Routing | None:
        """A generative student streaming its answer as it generates it (full and canary: no confidence to wait
        for; `reply` None), or None when its answer must be generated first (`GenerativeStudent.streams_live`)."""
        student = self.generative.get(policy.model)
        if not student.streams_live(body):
            return None
        decision = decide(policy, NEVER_SURE, 1.0, False, draws)
        if decision.answerer is Who.TEACHER:
            return TEACHER
        return Routing(student, None, "audit" if decision.audit else None, policy)

    def student_failed(self, policy: RoutePolicy, exc: BaseException) -> None:
        """A student failed to answer (the teacher answers): counted for /metrics and logged."""
        self.failures[policy.task] = self.failures.get(policy.task, 0) + 1
        log.warning("student %s failed (%s); the teacher answers", policy.model, type(exc).__name__)

    async def _ask(
        self, student: Answerer, policy: RoutePolicy, body: dict[str, Any], ids: ReplyIds
    ) -> StudentReply | None:
        """The student's reply, or None when it failed (it never reaches the caller: the teacher answers)."""
        try:
            return await student.complete(body, ids)
        except Exception as exc:  # any student failure: counted, logged, and the teacher answers
            self.student_failed(policy, exc)
            return None

    # -- agreement and rollback --------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background (an audit, a rollback), cancelled when the router closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def metric(self, policy: RoutePolicy) -> str:
        """How the route's student is compared with the teacher: a generative student's eval metric, else labels."""
        return self.generative.get(policy.model).metric if self.generative.serves(policy.model) else "label"

    def record(
        self,
        policy: RoutePolicy,
        student_answer: str,
        teacher_output: str | None,
        confidence: float | None = None,
        verdict: bool | None = None,
        catch_all: tuple[float, str] | None = None,
    ) -> None:
        """One comparison of a student's answer (given with `confidence`, None when unknown: a live stream) with
        the teacher's (`None`: the teacher failed); `verdict` is the judge's, for the `judge` metric
        (`service/judging.py`). A calibrating cascade's comparisons only calibrate it: they are no served answers to
        judge. `catch_all`: a classifier's probability of its catch-all label, and the label (kept with each
        sample: a calibrating cascade learns the catch-all's live share from them)."""
        if verdict is not None or teacher_output is None:
            agree = bool(verdict)
        else:
            agree = agree_as(self.metric(policy), student_answer, teacher_output)
        if policy.mode == "cascade" and confidence is not None and policy.target_agreement is not None:
            source = CALIBRATION if policy.calibrating else AUDIT
            self._sample(
                policy, source, confidence, agree, _catch_all_fields(catch_all, student_answer, teacher_output)
            )
        if policy.calibrating:
            return
        self.writer.submit(
            "agreements",
            {
                "id": time_ordered_id("agr_"),
                "ts": time.time(),
                "task": policy.task,
                "model": policy.model,
                "source": "shadow" if policy.mode == "shadow" else "audit",
                "agree": int(agree),
            },
            prompt=True,  # `route show` and the other workers' floors read them back
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
            self.spawn(asyncio.to_thread(roll_back, self.store, policy, reason))

    def _sample(self, policy: RoutePolicy, source: str, confidence: float, agree: bool, extra: dict[str, Any]) -> None:
        """A calibration sample or an audit of a promised cascade, with the student's confidence (and `extra`: the
        catch-all columns of `_catch_all_fields`)."""
        row = {"id": time_ordered_id("rsm_"), "ts": time.time(), "task": policy.task, "model": policy.model}
        row |= {"since": policy.since, "source": source, "confidence": float(confidence), "agree": int(agree)}
        row |= extra
        self.writer.submit("route_samples", row, prompt=True)  # calibration reads them back

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.pool.close()
        await self.generative.close()


def _catch_all_fields(catch_all: tuple[float, str] | None, student: str, teacher: str | None) -> dict[str, Any]:
    """A sample's catch-all columns for a student with a catch-all label (`catch_all`: the head's probability of
    it, and the label): that probability and whether the student and the teacher answered it (a failed teacher
    counts as no catch-all, as it counts as a disagreement); none for a student without one."""
    if catch_all is None:
        return {}
    p, label = catch_all
    said = teacher is not None and teacher.strip() == label
    return {"catch_all": p, "student_catch_all": int(student == label), "teacher_catch_all": int(said)}
