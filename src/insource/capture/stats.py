"""Small shared rules about captured outputs: the task kind and the near-duplicate key.

`insource tasks` and `insource dataset build` both decide the kind with `output_kind` over answers trimmed
with `str.strip` (`answer_key`), so they agree on the same traffic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

Kind = Literal["classification", "generation"]

MAX_LABELS = 100  # more distinct answers than this is not a label set (Banking77 has 77 intents)
MAX_LABEL_SHARE = 0.2  # distinct answers / requests at or under this: a label set, however long the labels
MIN_REPEATED_SHARE = 0.5  # or: at least half the requests got an answer that other requests got too
MAX_LABEL_CHARS = 64.0  # labels are short (average answer length)


def answer_key(output: str) -> str:
    """The answer as the dataset builder and the students see it: whitespace-trimmed (`str.strip`)."""
    return output.strip()


def output_kind(answers: Mapping[str, int]) -> Kind:
    """`classification` when the answers form a small, repeating set of short labels, else `generation`.

    `answers` maps each distinct (trimmed) answer to how many requests got it. A label set is at most
    `MAX_LABELS` answers averaging at most `MAX_LABEL_CHARS` characters, and repeats: either few distinct
    answers for the traffic (≤ 20% of requests), or most requests (≥ 50%) got an answer another request got too.
    A few hundred Banking77 captures over 77 intents repeat like this; free text almost never does.
    """
    requests = sum(answers.values())
    distinct = len(answers)
    if requests < 2 or distinct < 1 or distinct > MAX_LABELS:
        return "generation"
    avg_chars = sum(len(a) * n for a, n in answers.items()) / requests
    if avg_chars > MAX_LABEL_CHARS or any("\n" in a for a in answers):
        return "generation"
    repeated = sum(n for n in answers.values() if n > 1)
    few = distinct <= max(2.0, MAX_LABEL_SHARE * requests)
    return "classification" if few or repeated >= MIN_REPEATED_SHARE * requests else "generation"


_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Near-duplicate key: lowercase, punctuation and whitespace collapsed. Digits are kept: inputs that differ
    in an order id or an amount are different inputs."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())
