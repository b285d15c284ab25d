"""How the fake upstream (and so the demo's simulated teacher) answers the `judge` metric's requests
(`insource.routing.judge`): it reads the two answers back out of the judge prompt and grades them with a
rule, in the real wire format (a chat completion saying EQUIVALENT or DIFFERENT).

`fair_judge` (the default) calls two answers equivalent when they are the same after normalisation, the same
JSON, or one says the other with words around it ("4" and "2 + 2 = 4"). `FakeUpstream.judge` takes any
`Judge`, e.g. a position-biased one to show that asking in both orders cancels the bias.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from insource.routing.agreement import agree, normalise
from insource.routing.judge import DIFFERENT, EQUIVALENT, read_judge_prompt

Judge = Callable[[str, str], bool]  # (answer A, answer B) -> equivalent?


def fair_judge(answer_a: str, answer_b: str) -> bool:
    if agree("json", answer_a, answer_b) or agree("exact", answer_a, answer_b):
        return True
    a, b = normalise(answer_a), normalise(answer_b)
    short, long = sorted((a, b), key=len)
    return bool(short) and re.search(r"(?<!\w)" + re.escape(short) + r"(?!\w)", long) is not None


def judge_reply(judge: Judge, messages: list[dict[str, Any]]) -> str | None:
    """The verdict for a judge request's messages, or None when they are not one."""
    answers = read_judge_prompt(messages)
    if answers is None:
        return None
    return EQUIVALENT if judge(*answers) else DIFFERENT
