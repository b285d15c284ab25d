"""Templates assigned to a task (`insource tasks assign`): which task an untagged prompt belongs to.

Runs on the gateway's hot path, so matching is string comparisons only: the message count, each constant
message's role and text (equal-length strings compare fast, different lengths at once), then the slot's constant
prefix and suffix. No mining library is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from insource.capture.slots import Template, last_user_text, message_text


def has_constant_text(template: Template) -> bool:
    """A template with no constant text would match every prompt of its length: it cannot be assigned."""
    return bool(template.constant or template.prefix.strip() or template.suffix.strip())


def fits(template: Template, messages: Sequence[Any]) -> bool:
    """Whether a prompt is an instance of the template (constant messages equal, slot inside prefix/suffix)."""
    if not template.matches(messages):
        return False
    if not template.prefix and not template.suffix:
        return True
    if template.slot is not None and template.slot < len(messages):
        text = message_text(messages[template.slot])
    else:
        text = last_user_text(messages)
    return (
        len(text) >= len(template.prefix) + len(template.suffix)
        and text.startswith(template.prefix)
        and text.endswith(template.suffix)
    )


@dataclass(frozen=True)
class Assigned:
    template_id: str
    task: str
    template: Template


class AssignedTemplates:
    """The assigned templates, tried oldest assignment first; the first that fits names the task."""

    def __init__(self, items: Sequence[Assigned] = ()) -> None:
        self.items = tuple(items)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> AssignedTemplates:
        items = []
        for r in rows:
            template = Template.from_dict(orjson.loads(r["template"]))
            if has_constant_text(template):
                items.append(Assigned(str(r["template_id"]), str(r["task"]), template))
        return cls(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def task_for(self, messages: Any) -> str | None:
        if not isinstance(messages, list):
            return None
        for item in self.items:
            if fits(item.template, messages):
                return item.task
        return None
