"""Small shared rules about captured outputs: the task kind and the near-duplicate key.

`insource tasks` and `insource dataset build` both decide the kind with `output_kind` over answers trimmed
with `str.strip` (`answer_key`), so they agree on the same traffic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

Kind = Literal["classification", "generation"]

MAX_LABEL_SHARE = 0.2  # distinct answers / requests at or under this: a label set, however long the labels
MIN_REPEATED_SHARE = 0.5  # or: at least half the requests got an answer that other requests got too
MAX_LABEL_CHARS = 64.0  # labels are short (average answer length)


def answer_key(output: str) -> str:
    """The answer as the dataset builder and the students see it: whitespace-trimmed (`str.strip`)."""
    return output.strip()


def output_kind(answers: Mapping[str, int]) -> Kind:
    """`classification` when the answers are short one-line labels that repeat, else `generation` (see
    `kind_and_reason`)."""
    return kind_and_reason(answers)[0]


def kind_and_reason(answers: Mapping[str, int]) -> tuple[Kind, str]:
    """The task's kind and why, in words (`insource tasks` shows it).

    `answers` maps each distinct (trimmed) answer to how many requests got it. A label set is answers averaging
    at most `MAX_LABEL_CHARS` characters, none spanning lines, that repeat: either few distinct answers for the
    traffic (≤ 20% of requests), or most requests (≥ 50%) got an answer another request got too. There is no cap
    on the number of labels: an intent set of 150 or 300 labels is still a label set when its answers repeat
    (Banking77 has 77 intents, CLINC150 150); free text almost never repeats.
    """
    requests = sum(answers.values())
    distinct = len(answers)
    if requests < 2:
        return "generation", f"{requests} answer{'' if requests == 1 else 's'} so far: too few to see labels repeat"
    avg_chars = sum(len(a) * n for a, n in answers.items()) / requests
    if avg_chars > MAX_LABEL_CHARS:
        return "generation", f"answers average {avg_chars:.0f} characters; labels average {MAX_LABEL_CHARS:.0f} at most"
    multiline = sum(n for a, n in answers.items() if "\n" in a)
    if multiline:
        return (
            "generation",
            f"{multiline} answer{' spans' if multiline == 1 else 's span'} several lines; labels are one line",
        )
    repeated = sum(n for n in answers.values() if n > 1)
    few = distinct <= max(2.0, MAX_LABEL_SHARE * requests)
    per_answer = requests / distinct
    if few or repeated >= MIN_REPEATED_SHARE * requests:
        label_word = "label" if distinct == 1 else "labels"
        times = f"{per_answer:,.0f}" if per_answer >= 10 else f"{per_answer:.2g}"
        return "classification", f"{distinct:,} {label_word}, each answer repeats {times}× on average"
    return "generation", (
        f"{distinct:,} distinct answers for {requests:,} requests, only {repeated / requests:.0%} of requests share "
        f"an answer with another; labels repeat for {MIN_REPEATED_SHARE:.0%} or more"
    )


_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Near-duplicate key: lowercase, punctuation and whitespace collapsed. Digits are kept: inputs that differ
    in an order id or an amount are different inputs."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())
