"""Sending a realistic workload through the gateway with the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import openai


@dataclass
class PhaseResult:
    name: str
    requests: int = 0
    ok: int = 0
    failed: int = 0
    served: dict[str, int] = field(default_factory=dict)
    correct: int = 0  # answers that agree with the gold one
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # (text, answer, served_by)

    @property
    def insourced(self) -> int:
        return sum(n for who, n in self.served.items() if "@" in who and ":" not in who)  # TASK@vN, not P:M


async def _one(client: openai.AsyncOpenAI, messages: list[dict[str, str]], task: str) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=cast(Any, messages),
        metadata={"task": task},
        temperature=0,
    )
    completion = raw.parse()
    return (completion.choices[0].message.content or "").strip(), raw.headers.get("x-insource-served-by", "?")


async def send_phase(
    name: str,
    base_url: str,
    key: str,
    task: str,
    pairs: list[tuple[str, str]],
    build: Callable[[str], list[dict[str, str]]],
    advance: Callable[[], None],
    concurrency: int = 24,
    agree: Callable[[str, str], bool] = operator.eq,
) -> PhaseResult:
    """Send every (text, gold) pair as a chat request, `concurrency` at a time; `agree(answer, gold)` judges."""
    result = PhaseResult(name)
    limit = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60) as client:

        async def run(text: str, gold: str) -> None:
            async with limit:
                result.requests += 1
                try:
                    answer, served = await _one(client, build(text), task)
                except openai.APIError:
                    result.failed += 1
                else:
                    result.ok += 1
                    result.served[served] = result.served.get(served, 0) + 1
                    result.correct += int(agree(answer, gold))
                    result.answers.append((text, answer, served))
                advance()

        await asyncio.gather(*(run(text, gold) for text, gold in pairs))
    return result
