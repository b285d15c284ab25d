"""In-house students in the worker: loaded once, predictions micro-batched off the event loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class StudentPool:
    def __init__(self, registry: Path) -> None:
        self.registry = registry
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insource-student")
        self._students: dict[str, Any] = {}
        self._batchers: dict[str, Batcher] = {}
        self._templates: dict[str, Any] = {}
        self._loading: dict[str, asyncio.Future[Any]] = {}

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
