"""A simulated teacher that answers from a table (prompt text -> answer): label-like tasks answer a label,
long-form tasks answer long text. Repeats of a long answer are worded differently, as a sampled LLM's are.

Used by the opportunity finder's end-to-end test; attach it as a `FakeUpstream(responder=...)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from insource.capture.slots import last_user_text

LONG = 200  # answers longer than this vary on repeats


class TableTeacher:
    def __init__(self, answers: Mapping[str, str], default: str = "unknown") -> None:
        self.answers = dict(answers)
        self.default = default
        self.seen: Counter[str] = Counter()

    def __call__(self, model: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        prompt = last_user_text(messages)
        answer = self.answers.get(prompt, self.default)
        self.seen[prompt] += 1
        repeat = self.seen[prompt] - 1
        if len(answer) > LONG and repeat:
            return f"Let me work through this again (attempt {repeat + 1}).\n{answer}"
        return answer
