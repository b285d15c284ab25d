"""The model card (`card.md`): what the student is, where its data came from, how well it does."""

from __future__ import annotations

import json
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else str(value)


def _head_lines(head: Any) -> list[str]:
    """How the classifier's confidence is made (which evidence was mixed in, chosen on validation)."""
    if not isinstance(head, dict):
        return []
    parts = [f"logistic regression (C={_fmt(head.get('C'))}, temperature {_fmt(head.get('temperature'))})"]
    if head.get("knn_weight"):
        parts.append(f"nearest-neighbour vote (weight {_fmt(head['knn_weight'])})")
    if head.get("lexical_weight"):
        parts.append(f"TF-IDF n-gram view (weight {_fmt(head['lexical_weight'])})")
    return [f"- Head: {' + '.join(parts)}", *_scope_lines(head)]


def _scope_lines(head: dict[str, Any]) -> list[str]:
    """What the student sends to the teacher as out of scope (older models: the best-similarity rule only)."""
    ood = head.get("ood")
    if isinstance(ood, dict):
        rule = (
            f"mean cosine to its {_fmt(ood.get('k'))} nearest training inputs below {_fmt(head.get('ood_threshold'))} "
            f"(the {_fmt(ood.get('alpha'))} quantile of held-out validation inputs)"
        )
    else:
        rule = f"best cosine to a training input below {_fmt(head.get('ood_threshold'))}"
    lines = [f"- Unlike the training traffic (deferred whatever the confidence): {rule}"]
    catch = head.get("catch_all")
    if isinstance(catch, dict):
        lines.append(
            f"- Catch-all label `{catch.get('label')}` (recognised by {catch.get('reason')}; "
            f"{_pct(catch.get('train_share'))} of training): an in-scope answer goes to the teacher when a nearest "
            f"training input carries it, or when it would be as likely as the answer at "
            f"{_pct(catch.get('live_share_allowed'))} of live traffic (odds × {_fmt(catch.get('odds_shift'))}); "
            f"`{catch.get('label')}` itself is answered at its own probability, like any label"
        )
    elif "catch_all" in head:
        lines.append("- Catch-all label: none recognised")
    return lines


_CLASSIFIER_NOTE = [
    "The student's answers are the teacher's exact answer strings seen in training; inputs unlike the",
    "training traffic are flagged out-of-distribution and deferred to the teacher.",
]
_CLASSIFIER_NEXT = "Run `insource eval` for test-split agreement, the coverage–agreement curve and thresholds."
_GENERATIVE_NOTE = [
    "A generative student: it writes its own answers (a LoRA adapter: `adapter/` in safetensors for vLLM,",
    "`adapter.gguf` for llama.cpp). `insource serve` runs it on llama.cpp with its base model; it answers only",
    "when its least likely answer token clears the threshold `insource eval` finds (else the teacher answers).",
]
_GENERATIVE_NEXT = (
    "Run `insource eval` for the agreement with the teacher (metric json, exact or similarity), the "
    "coverage–agreement curve and thresholds on the minimum token probability."
)


def shape_summary(shape: dict[str, Any] | None) -> str:
    """One line for `routing/shape.py`'s rule: its keys, label fields and nested keys."""
    if not shape:
        return "none"
    parts = [f"keys {', '.join(shape.get('keys') or [])}"]
    parts += [f"{k}: {len(v)} labels" for k, v in (shape.get("labels") or {}).items()]
    for key, sub in (shape.get("nested") or {}).items():
        by = ", ".join(sub.get("by") or {})
        parts.append(f"{key}: {len(sub.get('keys') or [])} keys" + (f" (by {by})" if by else ""))
    return "; ".join(parts)


def render_card(info: dict[str, Any], manifest: dict[str, Any]) -> str:
    generative = info.get("student") == "lora"
    kind_lines = (
        [
            f"- Base model: `{info.get('base_model')}`",
            f"- LoRA: {_fmt(info.get('lora', {}))}",
            f"- Pruned system prompt: {_fmt(info.get('system_prompt'))}",
            f"- Copied fields (answers with other values are deferred): {_fmt(info.get('copied_fields'))}",
            "- Answer shape (answers with other keys or labels are deferred): "
            + shape_summary(info.get("answer_shape")),
        ]
        if generative
        else [f"- Classes: {len(info.get('labels') or [])}"]
    )
    lines = [
        f"# {info.get('name', info.get('task'))}",
        "",
        f"- Task: `{info.get('task')}`",
        f"- Student: `{info.get('student')}`",
        f"- Created: {info.get('created_at')}",
        *kind_lines,
        f"- Runtime: {_fmt(info.get('runtime', {}))}",
        *_head_lines(info.get("head")),
        "",
        "## Data provenance",
        "",
        f"- Dataset: `{info.get('dataset', {}).get('path')}`",
        f"- Counts: {_fmt(manifest.get('counts', {}))}",
        f"- Providers: {_fmt(manifest.get('providers', {}))}",
        f"- Terms: {_fmt(manifest.get('terms', {}))}",
        f"- Refused by the terms guard: {_fmt(manifest.get('refused', {}))}",
        f"- Purpose: {manifest.get('purpose', 'train')}",
        "",
        *(_GENERATIVE_NOTE if generative else _CLASSIFIER_NOTE),
        "",
        "## Metrics (validation split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted((info.get("metrics") or {}).items())]
    lines += ["", _GENERATIVE_NEXT if generative else _CLASSIFIER_NEXT, ""]
    return "\n".join(lines)
