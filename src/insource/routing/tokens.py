"""Token counts for a student's answer: what the teacher would have counted for the same request.

A student answer is priced at its real serving cost, and the teacher's price for the same request is
recorded as avoided. That price needs the teacher's token counts, which nobody reported: they are counted
here from the message contents the way chat models count them (the text of each message plus a small
per-message overhead, as OpenAI documents), never from the size of the request's JSON (its keys, quotes
and escapes are not tokens: that overstated the avoided cost by about a third).

A token is a run of word characters or one punctuation mark; whitespace is free. For English text this is
close to what OpenAI's BPE tokenizers count, and it is exactly the rule `insource.testing`'s fake upstream
reports, so a student's figures and the fake teacher's are comparable.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 3  # role and separators of each message
REPLY_PRIMING = 3  # the assistant turn every reply is primed with
NON_TEXT_PART_TOKENS = 85  # an image or audio part, at its smallest


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return count_tokens(str(content))
    total = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            total += count_tokens(part["text"])
        else:
            total += NON_TEXT_PART_TOKENS
    return total


def prompt_tokens(messages: Any) -> int:
    """The prompt tokens a chat model would count for `messages`."""
    total = REPLY_PRIMING
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += 1 + count_tokens(name)
        if message.get("tool_calls"):
            total += count_tokens(orjson.dumps(message["tool_calls"]).decode())
    return total


def completion_tokens(answer: str, n: int = 1) -> int:
    """The completion tokens of `n` choices that each say `answer`."""
    return count_tokens(answer) * n
