"""Templates assigned to a task (`insource tasks assign`): which task an untagged prompt belongs to.

Runs on the gateway's hot path, so matching is string comparisons only: the message count, each constant
message's role and text (equal-length strings compare fast, different lengths at once), then the slot's constant
prefix and suffix (or, for an instruction with a wildcard of its own, a regex anchored at the slot's start).
No mining library is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from insource.capture.slots import Template, last_user_text, message_text


def has_constant_text(template: Template, head_pattern: str | None = None) -> bool:
    """A template with no constant text would match every prompt of its length: it cannot be assigned."""
    return bool(template.constant or template.prefix.strip() or template.suffix.strip() or head_pattern)


def fits(template: Template, messages: Sequence[Any], head: re.Pattern[str] | None = None) -> bool:
    """Whether a prompt is an instance of the template: constant messages equal, the slot inside its prefix and
    suffix, and starting with the head pattern when the instruction has a wildcard of its own."""
    if not template.matches(messages):
        return False
    if not template.prefix and not template.suffix and head is None:
        return True
    if template.slot is not None and template.slot < len(messages):
        text = message_text(messages[template.slot])
    else:
        text = last_user_text(messages)
    return (
        len(text) >= len(template.prefix) + len(template.suffix)
        and text.startswith(template.prefix)
        and text.endswith(template.suffix)
        and (head is None or head.match(text) is not None)
    )


def load(data: dict[str, Any]) -> tuple[Template, re.Pattern[str] | None]:
    """A stored template (`Template` dict plus an optional `head_pattern`)."""
    pattern = data.get("head_pattern")
    return Template.from_dict(data), re.compile(pattern) if isinstance(pattern, str) else None


@dataclass(frozen=True)
class Assigned:
    template_id: str
    task: str
    template: Template
    head: re.Pattern[str] | None = None


class AssignedTemplates:
    """The assigned templates, tried oldest assignment first; the first that fits names the task."""

    def __init__(self, items: Sequence[Assigned] = ()) -> None:
        self.items = tuple(items)
        self._by_length: dict[int | None, tuple[Assigned, ...]] = {}  # message count -> the templates to try
        lengths = {i.template.n_messages for i in self.items}
        for n in lengths | {None}:
            self._by_length[n] = tuple(i for i in self.items if i.template.n_messages in (n, None))

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> AssignedTemplates:
        items = []
        for r in rows:
            template, head = load(orjson.loads(r["template"]))
            if has_constant_text(template, None if head is None else head.pattern):
                items.append(Assigned(str(r["template_id"]), str(r["task"]), template, head))
        return cls(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def task_for(self, messages: Any) -> str | None:
        if not isinstance(messages, list):
            return None
        candidates = self._by_length.get(len(messages))
        for item in self._by_length[None] if candidates is None else candidates:
            if fits(item.template, messages, item.head):
                return item.task
        return None
