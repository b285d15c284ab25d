"""Copied fields: the top-level fields of a JSON task whose string values the teacher (almost) always copies
verbatim from the prompt (an extraction task's spans: names, dates, order ids).

Learned from the training data when a generative student is distilled (`learn`, recorded in model.json as
`copied_fields`): a field is copied when at least `COPY_SHARE` of its string values (every string inside it,
nested ones too) appear in the prompt, over at least `MIN_VALUES` values. At eval and serving time, a student
answer holding a value of a copied field that is not in the prompt was invented or misspelt, not copied: it is
deferred to the teacher (confidence 0), like an answer that does not parse (`holds_copies`).

Matching: whitespace runs count as one space; case counts unless the teacher's own copies needed it not to
(`match` is `exact` or `casefold`, the strictest that the teacher's answers pass). Pure standard library: the
serving path imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from insource.routing.agreement import NOT_JSON, parse_json
from insource.routing.shape import fits_value

COPY_SHARE = 0.98
MIN_VALUES = 20
MATCHES = ("exact", "casefold")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _fold(text: str, match: str) -> str:
    text = " ".join(text.split())
    return text.casefold() if match == "casefold" else text


def _fields(value: Any) -> dict[str, list[str]] | None:
    """String values by top-level field of a parsed answer ("" for a JSON array), or None: not JSON."""
    if value is NOT_JSON:
        return None
    if isinstance(value, dict):
        return {str(k): list(_strings(v)) for k, v in value.items()}
    return {"": list(_strings(value))}


def learn(examples: list[tuple[str, str]]) -> dict[str, Any] | None:
    """From (prompt text, teacher answer) pairs: {"fields": [...], "match": "exact"|"casefold", "share": {field:
    share copied}}, or None when no field is copied (or the answers are not JSON)."""
    for match in MATCHES:
        found: dict[str, list[int]] = {}
        for prompt, answer in examples:
            fields = _fields(parse_json(answer))
            if fields is None:
                continue
            folded = _fold(prompt, match)
            for name, values in fields.items():
                found.setdefault(name, []).extend(int(_fold(v, match) in folded) for v in values)
        copied = {
            k: sum(v) / len(v) for k, v in found.items() if len(v) >= MIN_VALUES and sum(v) >= COPY_SHARE * len(v)
        }
        if copied:
            share = {k: round(v, 4) for k, v in sorted(copied.items())}
            return {"fields": sorted(copied), "match": match, "share": share}
    return None


def holds_copies(answer: str, prompt: str, rule: dict[str, Any] | None) -> bool:
    """Whether every string value of the answer's copied fields appears in the prompt (True without a rule, or
    for an answer that is not JSON: other checks decide those)."""
    return _holds(parse_json(answer), prompt, rule)


def _holds(value: Any, prompt: str, rule: dict[str, Any] | None) -> bool:
    if not rule or not rule.get("fields"):
        return True
    fields = _fields(value)
    if fields is None:
        return True
    match = str(rule.get("match") or "exact")
    folded = _fold(prompt, match)
    return all(_fold(v, match) in folded for name in rule["fields"] for v in fields.get(name, ()))


def json_servable(answer: str, prompt: str, rule: dict[str, Any] | None, shape: dict[str, Any] | None = None) -> bool:
    """Whether a `json` task's answer can be served: it parses, its copied fields' values are in the prompt, and it
    uses only the keys and labels of the teacher's answers (`routing/shape.py`): the one rule eval and serving
    both apply."""
    value = parse_json(answer)  # once, for all three checks
    return value is not NOT_JSON and _holds(value, prompt, rule) and fits_value(value, shape)


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The text a copied value may come from: every message's string content (parts' text included)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "\n".join(out)
