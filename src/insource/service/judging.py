"""The `judge` metric at serving time: the teacher grades a student's answer against its own (`routing/judge.py`),
asked in both orders; the student agrees only when both verdicts say EQUIVALENT.

`judge` takes the call that asks the teacher (`service/chat.py` passes one that meters each judge request as an
audit: spend, not a caller's request), so this module stays free of the request path's plumbing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from insource.routing.judge import judge_request, orders, verdict

AskTeacher = Callable[[dict[str, Any]], Awaitable[str | None]]


async def judge(ask: AskTeacher, request_messages: Any, student: str, teacher: str) -> bool:
    """Whether the teacher, asked with the two answers in both orders, found them equivalent both times (the
    two calls run concurrently; a failed call raises: no comparison is recorded)."""
    replies = await asyncio.gather(*(ask(judge_request(request_messages, a, b)) for a, b in orders(teacher, student)))
    return verdict(list(replies))
