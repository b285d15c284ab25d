"""What to insource next: mined prompt templates ranked by monthly spend × how distillable they look.

Distillability (0..1) of a template's answers, documented in docs/opportunities.md:

    d = consistency × (0.5 × repeated_share + 0.3 × (1 − diversity) + 0.2 × shortness)

- repeated_share: share of answered requests whose answer another request got too (labels repeat);
- diversity: distinct answers / answered requests;
- shortness: 1 / (1 + average answer characters / 100);
- consistency: on prompts sent more than once, the share of repeats the teacher answered as it did the first
  time (1 when no prompt repeated).

`score = monthly_spend_usd × d`. Monthly spend is the last 30 days' spend when the captures span a month or
more, else the spend scaled to 30 days (over a span of at least one day).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from insource.analytics.templates import MONTH_S, Mined, MineResult, mine
from insource.capture.assigned import has_constant_text
from insource.capture.stats import output_kind
from insource.store import Store
from insource.store.opportunities import save_templates

MAX_SHOWN_LABELS = 1000  # a label set is listed whole up to this many labels (more: the most frequent)

DAY_S = 86400.0


def distillability(mined: Mined) -> float:
    g = mined.group
    if g.answered == 0:
        return 0.0
    repeated = sum(n for n in g.answers.values() if n > 1) / g.answered
    diversity = 1.0 if g.overflow else len(g.answers) / g.answered
    shortness = 1.0 / (1.0 + g.answer_chars / g.answered / 100.0)
    repeats = g.repeats_same + g.repeats_differ
    consistency = g.repeats_same / repeats if repeats else 1.0
    return consistency * (0.5 * repeated + 0.3 * (1.0 - diversity) + 0.2 * shortness)


def monthly_spend(mined: Mined, first: float, last: float) -> float:
    span = last - first
    if span >= MONTH_S:
        return mined.group.recent_cost_usd
    return mined.group.cost_usd * MONTH_S / max(span, DAY_S)


def task_of(mined: Mined) -> str | None:
    """The task most of the template's requests carry; None when most are untagged."""
    task, _ = mined.group.tasks.most_common(1)[0]
    return task


def next_step(mined: Mined, task: str | None, kind: str, d: float) -> str:
    tid = mined.template_id
    if task is None and not has_constant_text(mined.template, mined.head_pattern):
        return (
            "tag these requests in the app (metadata.task or X-Insource-Task): "
            "the template has no constant text to match"
        )
    name = task or "NAME"
    assign = "" if task else f"insource tasks assign --template {tid} --task {name}, then "
    build = f"insource dataset build --task {name} --out data/{name}"
    if kind == "classification":
        return f"{assign}{build}, then insource distill --task {name} --student auto"
    if d >= 0.3:
        return f"{assign}{build} --kind generation, then insource distill --task {name} --student lora"
    return "keep on the teacher for now: answers are long and rarely repeat (re-check as traffic grows)"


def opportunity_rows(result: MineResult) -> list[dict[str, Any]]:
    """The `insource opportunities --json` rows, highest score first."""
    if result.first_ts is None or result.last_ts is None:
        return []
    ranked: list[tuple[float, float, int, str, dict[str, Any]]] = []
    for mined in result.templates:
        g = mined.group
        kind = "generation" if g.overflow else output_kind(g.answers)
        d = distillability(mined)
        spend = monthly_spend(mined, result.first_ts, result.last_ts)
        task = task_of(mined)
        labels = sorted(a for a, _ in g.answers.most_common(MAX_SHOWN_LABELS)) if kind == "classification" else None
        row: dict[str, Any] = {
            "template_id": mined.template_id,
            "template": mined.text,
            "task": task,
            "requests": g.requests,
            "monthly_spend_usd": round(spend, 6),
            "kind": kind,
            "labels": labels,
            "score": round(spend * d, 6),
            "next": next_step(mined, task, kind, d),
        }
        ranked.append((-row["score"], -d, -g.requests, mined.template_id, row))
    ranked.sort(key=lambda t: t[:4])
    return [t[4] for t in ranked]


def find_opportunities(store: Store) -> list[dict[str, Any]]:
    """Mine all captured traffic, remember the templates (for `tasks assign`), and rank them."""
    result = mine(store)
    now = time.time()
    rows = opportunity_rows(result)
    kinds = {r["template_id"]: r["kind"] for r in rows}
    save_templates(
        store,
        [
            {
                "id": m.template_id,
                "text": m.text,
                "template": orjson.dumps(m.stored()).decode(),
                "kind": kinds[m.template_id],
                "requests": m.group.requests,
                "mined_at": now,
            }
            for m in result.templates
        ],
    )
    return rows
