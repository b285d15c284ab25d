"""Answer shape: the keys and labels a JSON task's teacher answers with, learned from its answers at distill.

An extraction task's teacher answers from a closed vocabulary: the same top-level fields, a label field with a
few values (an intent, an issue type), and inside a nested object keys that depend on that label (SNIPS's
`PlayMusic` has an `artist`, never a `playlist_owner`). A small student most often goes wrong by naming a span
with a key the teacher never uses for that label (`track` in an `AddToPlaylist` answer): such an answer is the
wrong answer, whatever the student's confidence, so it is deferred to the teacher like one that does not parse.

`learn` reads the teacher's answers (recorded in model.json as `answer_shape`):
- `keys`: the top-level keys seen; an answer with another one does not fit;
- `labels`: each top-level field whose value is a string from a small set (at most `MAX_LABELS` values over at
  least `MIN_ANSWERS` answers, each value seen `MIN_SEEN` times on average): its values; an unseen value does not fit;
- `nested`: each top-level field whose value is an object: its keys overall, and per value of each label field
  seen in at least `MIN_PER_LABEL` answers, the keys seen with that value; a key never seen (with the answer's
  label, when that label is well supported) does not fit.

A rare but valid key the training answers never showed is deferred too: that costs coverage, never agreement.
Pure standard library: the serving path imports it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from insource.routing.agreement import NOT_JSON, parse_json

MIN_ANSWERS = 20  # fewer JSON-object answers than this: no shape is learned
MAX_LABELS = 64
MIN_SEEN = 5  # a label field's values repeat: answers per distinct value, on average
MIN_PER_LABEL = 10  # a label value conditions the nested keys once it has this many answers


def _objects(answers: list[str]) -> list[dict[str, Any]]:
    out = []
    for answer in answers:
        value = parse_json(answer)
        if isinstance(value, dict):
            out.append(value)
    return out


def _labels(objs: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Top-level fields that are always strings from a small, repeating set."""
    found: dict[str, Counter[str]] = {}
    for key in {k for o in objs for k in o}:
        values = [o[key] for o in objs if key in o]
        if len(values) < MIN_ANSWERS or not all(isinstance(v, str) for v in values):
            continue
        counts = Counter(values)
        if len(counts) <= MAX_LABELS and len(values) >= MIN_SEEN * len(counts):
            found[key] = counts
    return found


def _nested(objs: list[dict[str, Any]], labels: dict[str, Counter[str]]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key in sorted({k for o in objs for k, v in o.items() if isinstance(v, dict)}):
        inner = [o for o in objs if isinstance(o.get(key), dict)]
        by: dict[str, dict[str, list[str]]] = {}
        for label, counts in labels.items():
            per = {
                value: sorted({k for o in inner if o.get(label) == value for k in o[key]})
                for value, n in counts.items()
                if n >= MIN_PER_LABEL
            }
            if per:
                by[label] = dict(sorted(per.items()))
        nested[key] = {"keys": sorted({k for o in inner for k in o[key]}), "by": by}
    return nested


def learn(answers: list[str]) -> dict[str, Any] | None:
    """The shape of the teacher's JSON-object answers, or None (too few of them, or not JSON objects)."""
    objs = _objects(answers)
    if len(objs) < MIN_ANSWERS or len(objs) < 0.9 * len(answers):
        return None
    labels = _labels(objs)
    return {
        "keys": sorted({k for o in objs for k in o}),
        "labels": {k: sorted(v) for k, v in sorted(labels.items())},
        "nested": _nested(objs, labels),
    }


def _nested_fits(obj: dict[str, Any], key: str, rule: dict[str, Any]) -> bool:
    inner = obj.get(key)
    if not isinstance(inner, dict):
        return True  # a field that is an object in the teacher's answers but not here: the metric judges that
    allowed = set(rule.get("keys") or ())
    if any(k not in allowed for k in inner):
        return False
    for label, per in (rule.get("by") or {}).items():
        keys = per.get(obj.get(label))
        if keys is not None and any(k not in keys for k in inner):
            return False
    return True


def fits(answer: str, rule: dict[str, Any] | None) -> bool:
    """Whether a JSON answer uses only the keys and labels the teacher's answers use (True without a rule, or for
    an answer that is not JSON: the parse check decides those)."""
    return fits_value(parse_json(answer), rule)


def fits_value(value: Any, rule: dict[str, Any] | None) -> bool:
    """`fits` for an answer already parsed by `routing.agreement.parse_json`."""
    if not rule or value is NOT_JSON:
        return True
    if not isinstance(value, dict):
        return False
    keys = set(rule.get("keys") or ())
    if any(k not in keys for k in value):
        return False
    for label, values in (rule.get("labels") or {}).items():
        if label in value and value[label] not in values:
            return False
    return all(_nested_fits(value, key, sub) for key, sub in (rule.get("nested") or {}).items())
