"""The `judge` metric's wire format: the teacher grades a student's answer against its own.

The judge is asked twice, with the two answers in swapped positions (A = the teacher's, B = the student's, then
the reverse), and the student agrees only when both verdicts say EQUIVALENT: an LLM judge favours one position
(Zheng et al. 2023, "Judging LLM-as-a-judge", §3.3), and asking both ways cancels that bias instead of
counting it as agreement. A verdict that is neither word counts as DIFFERENT.

`judge_request` builds one chat request (sent to the task's teacher through its providers, metered as an
audit); `read_verdict` reads the teacher's reply; `read_judge_prompt` gives a fake teacher the two answers of a
judge request back, so test doubles can answer it in the real wire format. Pure standard library.
"""

from __future__ import annotations

import re
from typing import Any

EQUIVALENT = "EQUIVALENT"
DIFFERENT = "DIFFERENT"
JUDGE_MAX_TOKENS = 8
SYSTEM = (
    "You grade whether two answers to the same request are equivalent: they give the same information, the same "
    "values and the same decision, even if worded or formatted differently. Extra, missing or different facts make "
    f"them different. Reply with one word: {EQUIVALENT} or {DIFFERENT}."
)
_OPEN_A, _CLOSE_A, _OPEN_B, _CLOSE_B = "<answer_a>", "</answer_a>", "<answer_b>", "</answer_b>"
_ANSWERS = re.compile(
    re.escape(_OPEN_A) + r"\n(.*?)\n" + re.escape(_CLOSE_A) + r"\n\nAnswer B:\n" + re.escape(_OPEN_B) + r"\n(.*)\n"
    + re.escape(_CLOSE_B),
    re.S,
)  # fmt: skip


def _conversation(messages: Any) -> str:
    lines = []
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else str(content or "")
            lines.append(f"{message.get('role', 'user')}: {text}")
    return "\n".join(lines)


def judge_messages(request_messages: Any, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The judge's chat messages: the original request, then answers A and B."""
    user = (
        f"The request:\n<request>\n{_conversation(request_messages)}\n</request>\n\n"
        f"Answer A:\n{_OPEN_A}\n{answer_a}\n{_CLOSE_A}\n\nAnswer B:\n{_OPEN_B}\n{answer_b}\n{_CLOSE_B}\n\n"
        f"Are answers A and B equivalent? Reply {EQUIVALENT} or {DIFFERENT}."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def judge_request(request_messages: Any, answer_a: str, answer_b: str) -> dict[str, Any]:
    """One judge request (the model is the teacher's: the caller's alias, or the eval's teacher)."""
    return {
        "messages": judge_messages(request_messages, answer_a, answer_b),
        "temperature": 0,
        "max_tokens": JUDGE_MAX_TOKENS,
    }


def orders(teacher: str, student: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The two (A, B) orders the judge is asked in."""
    return (teacher, student), (student, teacher)


def read_verdict(reply: str | None) -> bool:
    """True when the judge said EQUIVALENT (its first word, any case or punctuation)."""
    words = re.findall(r"[A-Za-z]+", reply or "")
    return bool(words) and words[0].upper() == EQUIVALENT


def verdict(replies: list[str | None]) -> bool:
    """The student agrees only when every order's verdict is EQUIVALENT."""
    return bool(replies) and all(read_verdict(r) for r in replies)


def read_judge_prompt(messages: Any) -> tuple[str, str] | None:
    """(answer A, answer B) of a judge request's messages, or None when they are not one (for test doubles)."""
    if not isinstance(messages, list) or len(messages) != 2 or not isinstance(messages[0], dict):
        return None
    if messages[0].get("content") != SYSTEM or not isinstance(messages[1], dict):
        return None
    found = _ANSWERS.search(str(messages[1].get("content") or ""))
    return (found.group(1), found.group(2)) if found else None
