"""Small shared rules about captured outputs."""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["classification", "generation"]

MAX_LABELS = 100  # more distinct answers than this is not a label set (Banking77 has 77 intents)
MAX_LABEL_SHARE = 0.2  # distinct answers / requests: a label set repeats
MAX_LABEL_CHARS = 64.0  # labels are short


def output_kind(requests: int, distinct: int, avg_chars: float | None) -> Kind:
    """`classification` when the answers form a small, repeating set of short labels, else `generation`."""
    if requests < 2 or distinct < 1:
        return "generation"
    small = distinct <= MAX_LABELS and distinct <= max(2.0, MAX_LABEL_SHARE * requests)
    short = avg_chars is not None and avg_chars <= MAX_LABEL_CHARS
    return "classification" if small and short else "generation"


_NON_WORD = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


def normalise(text: str) -> str:
    """Near-duplicate key: lowercase, digits collapsed to 0, punctuation and whitespace collapsed."""
    return " ".join(_NON_WORD.sub(" ", _DIGITS.sub("0", text.lower())).split())
