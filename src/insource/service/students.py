"""In-house classifier students in the worker: loaded once, predictions micro-batched off the event loop,
each served through the `Answerer` protocol (`service/answerers.py`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insource.metering.usage import Usage
from insource.routing.tokens import completion_tokens, prompt_tokens
from insource.service.answerers import ReplyIds, StudentReply, completion_body, completion_events

if TYPE_CHECKING:
    from insource.capture.slots import Template


class Batcher:
    """Collects concurrent predictions for one student and runs them as batches in a thread.

    While one batch runs, new requests queue up and form the next batch: batching under load, no
    added wait when idle.
    """

    def __init__(self, student: Any, executor: ThreadPoolExecutor, max_batch: int = 32) -> None:
        self.student = student
        self.executor = executor
        self.max_batch = max_batch
        self.queue: list[tuple[str, asyncio.Future[Any]]] = []
        self.running = False
        self._task: asyncio.Task[None] | None = None

    async def predict(self, text: str) -> tuple[Any, float]:
        """The prediction for `text`, and the CPU seconds of its share of the batch that computed it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.queue.append((text, future))
        if not self.running:
            self.running = True
            self._task = loop.create_task(self._run())
        return await future

    def _timed(self, texts: list[str]) -> tuple[list[Any], float]:
        started = time.thread_time()
        preds = self.student.predict(texts)
        return preds, time.thread_time() - started

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.queue:
                batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
                try:
                    preds, seconds = await loop.run_in_executor(self.executor, self._timed, [t for t, _ in batch])
                except Exception as exc:  # handed to every waiting request, which falls back to the teacher
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                share = seconds / len(batch)  # each answer's part of the compute, not its time in the queue
                for (_, fut), pred in zip(batch, preds, strict=True):
                    if not fut.done():
                        fut.set_result((pred, share))
        finally:
            self.running = False


def input_template(raw: dict[str, Any]) -> Template | None:
    """The prompt template a student was trained through (`insource dataset build` infers one), or None when its
    inputs were the last user message's text (datasets written from (input, answer) pairs record none; registries
    from before that recorded `{"slots": ["input"]}`, which is read the same way)."""
    from insource.capture.slots import Template

    return Template.from_dict(raw) if raw and "version" in raw else None


STUDENT_TIMEOUT_S = 2.0  # a prediction slower than this is a failure: the teacher answers


class ClassifierStudent:
    """An in-process classifier student as an `Answerer`: its answer is one of the labels it was trained on."""

    def __init__(self, pool: StudentPool, name: str) -> None:
        self.pool = pool
        self.name = name

    async def complete(self, body: dict[str, Any], ids: ReplyIds) -> StudentReply:
        await self.pool.get(self.name)
        text = self.pool.extract(self.name, body["messages"])
        async with asyncio.timeout(STUDENT_TIMEOUT_S):
            pred, compute_s = await self.pool.predict(self.name, text)
        answer = str(pred.answer)
        n = int(body.get("n") or 1)
        usage = Usage(prompt_tokens(body.get("messages")), 0, completion_tokens(answer, n), 0)
        return StudentReply(
            text=answer,
            confidence=float(pred.confidence),
            body=completion_body(self.name, answer, n, usage, ids),
            usage=usage,
            ood=bool(pred.ood),
            compute_s=compute_s,
            catch_all=pred.catch_all,
        )

    def stream(
        self, body: dict[str, Any], reply: StudentReply, ids: ReplyIds, include_usage: bool
    ) -> AsyncIterator[bytes]:
        n = int(body.get("n") or 1)
        return completion_events(self.name, reply.text, n, reply.usage, ids, include_usage)


class StudentPool:
    def __init__(self, registry: Path) -> None:
        self.registry = registry
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insource-student")
        self._students: dict[str, Any] = {}
        self._batchers: dict[str, Batcher] = {}
        self._templates: dict[str, Any] = {}
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._answerers: dict[str, ClassifierStudent] = {}

    def answerer(self, name: str) -> ClassifierStudent:
        """The answerer of the registry entry `name` ("TASK@vN"); loaded on its first answer."""
        found = self._answerers.get(name)
        if found is None:
            found = self._answerers[name] = ClassifierStudent(self, name)
        return found

    async def get(self, name: str) -> Any:
        if name in self._students:
            return self._students[name]
        if name not in self._loading:
            self._loading[name] = asyncio.ensure_future(asyncio.to_thread(self._load, name))
        try:
            student = await asyncio.shield(self._loading[name])
        finally:
            if self._loading.get(name) is not None and self._loading[name].done():
                self._loading.pop(name, None)
        if name not in self._students:  # concurrent first requests share one load and one batcher
            self._students[name] = student
            self._batchers[name] = Batcher(student, self.executor)
        return self._students[name]

    def _load(self, name: str) -> Any:
        from insource.registry.entries import load_student

        student = load_student(self.registry, name)
        self._templates[name] = input_template(student.template)
        return student

    def extract(self, name: str, messages: list[Any]) -> str:
        """The student's input: the template's varying part, else the last user message's text (as trained)."""
        from insource.capture.slots import last_user_text

        template = self._templates.get(name)
        if template is not None:
            return str(template.extract(messages))
        return last_user_text(messages).strip()

    async def predict(self, name: str, text: str) -> tuple[Any, float]:
        return await self._batchers[name].predict(text)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
