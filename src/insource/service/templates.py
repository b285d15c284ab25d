"""`insource tasks assign`: make a mined template's requests a task, past and future.

Past: captured requests without a task whose prompt fits the template get the task (captures and usage
records), so `insource tasks`, `dataset build` and `distill` see them. Future: the assignment is stored; every
gateway worker reloads assignments every 0.5 s and tags an untagged request whose prompt fits the template.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from insource.analytics.templates import iter_prompts
from insource.capture.assigned import fits, has_constant_text, load
from insource.capture.slots import Template
from insource.errors import NotFound, NotReady
from insource.service.admission import _CONTROL, MAX_NAME
from insource.store import Store
from insource.store.opportunities import (
    assign,
    get_template,
    iter_capture_pages,
    record_audit,
    tag_requests,
)

BATCH = 2000


def check_task_name(task: str) -> str:
    name = task.strip()
    if not name or len(name) > MAX_NAME or _CONTROL.search(name):
        raise NotReady("--task must be a non-empty name of at most 200 characters, without control characters")
    return name


def load_template(store: Store, template_id: str) -> tuple[dict[str, Any], Template, re.Pattern[str] | None]:
    row = get_template(store, template_id)
    if row is None:
        raise NotFound(f"unknown template {template_id!r}: run `insource opportunities` to list the templates")
    data = orjson.loads(row["template"])
    return data, *load(data)


def tag_past(store: Store, template: Template, head: re.Pattern[str] | None, task: str) -> int:
    """Give the task to every untagged captured request whose prompt fits the template."""
    tagged, ids = 0, []
    for row, messages in iter_prompts(store, iter_capture_pages(store, untagged_only=True)):
        if all(isinstance(m, dict) for m in messages) and fits(template, messages, head):
            ids.append(str(row["id"]))
        if len(ids) >= BATCH:
            tagged += tag_requests(store, ids, task)
            ids = []
    return tagged + (tag_requests(store, ids, task) if ids else 0)


def assign_template(store: Store, template_id: str, task: str) -> dict[str, Any]:
    """Assign the template to the task; returns `{"template_id", "task", "tagged"}`."""
    name = check_task_name(task)
    data, template, head = load_template(store, template_id)
    if not has_constant_text(template, None if head is None else head.pattern):
        raise NotReady(
            f"template {template_id} has no constant text, so it would match every prompt: "
            "tag these requests in the app instead (metadata.task or X-Insource-Task)"
        )
    assign(store, template_id, name, orjson.dumps(data).decode())
    tagged = tag_past(store, template, head, name)
    record_audit(store, "tasks_assign", name, template_id, {"tagged": tagged})
    return {"template_id": template_id, "task": name, "tagged": tagged}
