"""The redactor protocol and the helpers the built-in redactors share (no registry here: see `redact.py`)."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Protocol, runtime_checkable


@runtime_checkable
class Redactor(Protocol):
    name: str

    def redact(self, text: str) -> tuple[str, int]: ...


ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DIGITS = "0123456789"
_ESCAPES = "nrt"  # `\n`, `\r`, `\t` written out inside JSON-encoded text end a word like a real newline does


def contains_any(text: str, needles: tuple[str, ...]) -> bool:
    for needle in needles:  # noqa: SIM110 (a plain loop: no generator on the hot path)
        if needle in text:
            return True
    return False


def preceded_by(m: re.Match[str], chars: str) -> bool:
    """Whether the match is glued to one of `chars` before it (an escaped `\\n`/`\\r`/`\\t` is a boundary)."""
    return glued(m.string, m.start(), chars)


def glued(text: str, start: int, chars: str) -> bool:
    """Whether `text[start - 1]` is one of `chars` (and not the letter of a `\\n`, `\\r`, `\\t` escape)."""
    if start == 0:
        return False
    prev = text[start - 1]
    if prev not in chars:
        return False
    return not (prev in _ESCAPES and start > 1 and text[start - 2] == "\\")


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


class RegexRedactor:
    """Replace every match of `pattern` accepted by `check` with `placeholder`.

    Patterns avoid leading look-behinds (they defeat the regex engine's fast scan); boundary checks that
    need the preceding character are done in `check`, which sees the match object.
    """

    def __init__(
        self,
        name: str,
        pattern: re.Pattern[str],
        placeholder: str,
        *,
        hints: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.placeholder = placeholder
        self.hints = hints  # cheap substring tests: skip the regex when none is present
        self.min_length = 6  # nothing shorter can hold an e-mail, phone, card or IBAN

    def check(self, m: re.Match[str]) -> bool:
        return True

    def redact(self, text: str) -> tuple[str, int]:
        if self.hints and not contains_any(text, self.hints):
            return text, 0
        if self.pattern.search(text) is None:
            return text, 0
        count = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            if not self.check(m):
                return m.group(0)
            count += 1
            return self.placeholder

        out = self.pattern.sub(sub, text)
        return out, count
