"""Agreement between a generative student's answer and its teacher's, by the metric that fits the task.

- `json`: both parse as JSON and are equal after canonicalisation (key order, whitespace, number spelling and
  the surrounding whitespace of strings do not count); per-field agreement for objects;
- `exact`: equal after normalisation (Unicode NFKC, case, whitespace, trailing punctuation);
- `similarity`: chrF (character 6-gram F-score, β = 2; Popović 2015) at least `SIMILARITY_THRESHOLD`;
- `judge`: the teacher grades the student's answer against its own, asked in both orders (`routing/judge.py`):
  it needs teacher calls, so `agree` cannot decide it (the router and `insource eval` ask the teacher).

Pure standard library: the router imports it to judge audits and shadow comparisons.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Any

METRICS = ("json", "exact", "similarity", "judge")
LOCAL_METRICS = ("json", "exact", "similarity")  # decided here, without asking the teacher
SIMILARITY_THRESHOLD = 0.8
CHRF_ORDER = 6
CHRF_BETA = 2.0
JSON_SHARE = 0.9  # the json metric when at least this share of the teacher's answers are JSON objects/arrays
SHORT_WORDS = 8  # the exact metric when answers are at most this many words (p90), else similarity
NOT_JSON = object()  # what `parse_json` returns for an answer that is not JSON


def parse_json(text: str | None) -> Any:
    """The JSON value of an answer (a ```json fence around it is allowed), or `NOT_JSON`."""
    if text is None:
        return NOT_JSON
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if fence:
        body = fence.group(1)
    try:
        return _canonical(json.loads(body))
    except (json.JSONDecodeError, RecursionError):
        return NOT_JSON


def parses(text: str | None) -> bool:
    return parse_json(text) is not NOT_JSON


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).strip(): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalise(text: str | None) -> str:
    folded = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(folded.split()).rstrip(" .!?;:")


def _ngrams(text: str, n: int) -> Counter[str]:
    s = " ".join(text.split())
    return Counter(s[i : i + n] for i in range(len(s) - n + 1))


def chrf(hypothesis: str, reference: str, order: int = CHRF_ORDER, beta: float = CHRF_BETA) -> float:
    """chrF in [0, 1]: the mean character n-gram precision and recall (n = 1..order), as an F-beta score."""
    if hypothesis == reference:
        return 1.0
    precisions, recalls = [], []
    for n in range(1, order + 1):
        hyp, ref = _ngrams(hypothesis, n), _ngrams(reference, n)
        if not hyp or not ref:
            continue
        match = sum((hyp & ref).values())
        precisions.append(match / sum(hyp.values()))
        recalls.append(match / sum(ref.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)


def agree(metric: str, student: str | None, teacher: str | None) -> bool:
    """Whether the student's answer counts as the teacher's under `metric`."""
    if student is None or teacher is None:
        return False
    if metric == "json":
        mine = parse_json(student)
        return mine is not NOT_JSON and mine == parse_json(teacher)
    if metric == "similarity":
        return chrf(normalise(student), normalise(teacher)) >= SIMILARITY_THRESHOLD
    if metric == "exact":
        return normalise(student) == normalise(teacher)
    if metric == "judge":
        raise ValueError("the judge metric asks the teacher: see routing/judge.py")
    return student.strip() == teacher.strip()  # a label (classifier students)


def field_matches(student: str | None, teacher: str | None) -> dict[str, bool]:
    """Per top-level field of the teacher's JSON object: does the student's answer hold the same value."""
    theirs = parse_json(teacher)
    if not isinstance(theirs, dict):
        return {}
    mine = parse_json(student)
    mine = mine if isinstance(mine, dict) else {}
    return {key: key in mine and mine[key] == value for key, value in theirs.items()}


def choose_metric(teacher_answers: list[str]) -> str:
    """The metric that fits the task's answers: json, exact (short answers) or similarity."""
    if not teacher_answers:
        return "exact"
    structured = sum(isinstance(parse_json(a), dict | list) for a in teacher_answers)
    if structured >= JSON_SHARE * len(teacher_answers):
        return "json"
    words = sorted(len(a.split()) for a in teacher_answers)
    return "exact" if words[int(0.9 * (len(words) - 1))] <= SHORT_WORDS else "similarity"
