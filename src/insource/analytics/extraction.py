"""Extraction-risk signal per tenant: does its traffic look like someone building a model from the answers?

A signal for a human to look at, never a verdict and never an automatic block. Each feature is compared with
the other tenants of the same month; it counts when it is above an absolute floor AND at least twice the
other tenants' median (with no other tenant, the floor alone). Growths need a previous month: tenants without
one are left out of the comparison. Features (docs/opportunities.md):

| feature | floor | weight |
|---|---|---|
| template diversity (distinct prompt skeletons) | 20 | 1 |
| template diversity growth vs last month | ×2 | 1 |
| answers much longer than prompts (completion / prompt tokens) | 3 | 1 |
| share of prompts asking for step-by-step reasoning | 20% | 1 |
| share of requests with several samples (`n > 1`) | 5% | 1.5 |
| share of requests asking for log-probabilities | 5% | 1.5 |
| volume growth vs last month (requests) | ×3 | 1 |
| API keys in use | 5 | 0.5 |

score = flagged weight / total weight (0..1); level `high` from 0.45, `medium` from 0.2, else `low`.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from insource.analytics.templates import head
from insource.capture.slots import message_text

STEP_BY_STEP = re.compile(
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (?:your|all|the) (?:work|reasoning|steps)"
    r"|explain your reasoning|think (?:it )?through|reason(?:ing)? (?:it )?out",
    re.IGNORECASE,
)
MAX_SKELETONS = 100_000
HIGH, MEDIUM = 0.45, 0.2


@dataclass
class TenantTraffic:
    """What a tenant's captured prompts looked like over a window."""

    captures: int = 0
    several: int = 0  # n > 1
    logprobs: int = 0
    step_by_step: int = 0
    skeletons: set[str] = field(default_factory=set)


def _params(value: Any) -> dict[str, Any]:
    try:
        params = orjson.loads(value) if isinstance(value, str | bytes) else value
    except orjson.JSONDecodeError:
        return {}
    return params if isinstance(params, dict) else {}


def skeleton(hashes: list[str], messages: list[Any], constant: set[str]) -> str:
    """A prompt's layout: constant messages by hash, varying ones by their leading instruction."""
    parts = []
    for h, m in zip(hashes, messages, strict=False):
        role = str(m.get("role", "")) if isinstance(m, dict) else ""
        parts.append(f"{role}={h[:12]}" if h in constant else f"{role}:{head(message_text(m))}")
    return "|".join(parts)


def traffic_by_tenant(
    rows: Iterable[tuple[dict[str, Any], list[Any]]], constant: set[str], hashes_of: Callable[[Any], list[str]]
) -> dict[str, TenantTraffic]:
    out: dict[str, TenantTraffic] = {}
    for row, messages in rows:
        t = out.get(str(row["tenant"]))
        if t is None:
            t = out[str(row["tenant"])] = TenantTraffic()
        t.captures += 1
        params = _params(row["params"])
        n = params.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            t.several += 1
        if params.get("logprobs") is True or params.get("top_logprobs"):
            t.logprobs += 1
        if any(STEP_BY_STEP.search(message_text(m)) for m in messages if isinstance(m, dict)):
            t.step_by_step += 1
        if len(t.skeletons) < MAX_SKELETONS:
            t.skeletons.add(skeleton(hashes_of(row["messages"]), messages, constant))
    return out


@dataclass(frozen=True)
class Feature:
    name: str
    floor: float
    weight: float
    describe: Callable[[float, float], str]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


FEATURES = (
    Feature("template_diversity", 20, 1.0, lambda x, m: f"{x:.0f} distinct prompt templates (others' median {m:.0f})"),
    Feature(
        "diversity_growth", 2, 1.0, lambda x, m: f"template count grew ×{x:.1f} since last month (others ×{m:.1f})"
    ),
    Feature("answer_ratio", 3, 1.0, lambda x, m: f"answers {x:.1f}× longer than prompts (others {m:.1f}×)"),
    Feature(
        "step_by_step", 0.2, 1.0, lambda x, m: f"{_pct(x)} of prompts ask for step-by-step reasoning (others {_pct(m)})"
    ),
    Feature(
        "several_samples", 0.05, 1.5, lambda x, m: f"{_pct(x)} of requests ask for n > 1 samples (others {_pct(m)})"
    ),
    Feature("logprobs", 0.05, 1.5, lambda x, m: f"{_pct(x)} of requests ask for logprobs (others {_pct(m)})"),
    Feature("volume_growth", 3, 1.0, lambda x, m: f"requests grew ×{x:.1f} since last month (others ×{m:.1f})"),
    Feature("keys", 5, 0.5, lambda x, m: f"{x:.0f} API keys in use (others' median {m:.0f})"),
)


def features(
    figures: dict[str, Any], previous: dict[str, Any] | None, traffic: TenantTraffic | None, prev_skeletons: int
) -> dict[str, float | None]:
    """The feature values of one tenant for one month (growths are None without a previous month)."""
    t = traffic or TenantTraffic()
    captured = max(1, t.captures)
    prompt = float(figures["prompt_tokens"])
    prev_requests = float(previous["requests"]) if previous else 0.0
    diversity = float(len(t.skeletons))
    return {
        "template_diversity": diversity,
        "diversity_growth": diversity / prev_skeletons if prev_skeletons else None,
        "answer_ratio": float(figures["completion_tokens"]) / prompt if prompt > 0 else 0.0,
        "step_by_step": t.step_by_step / captured,
        "several_samples": t.several / captured,
        "logprobs": t.logprobs / captured,
        "volume_growth": float(figures["requests"]) / prev_requests if prev_requests else None,
        "keys": float(figures["keys"]),
    }


def risk(values: dict[str, dict[str, float | None]], tenant: str) -> dict[str, Any]:
    """`{"score", "level", "reasons"}` of one tenant, its features compared with the other tenants'."""
    mine = values[tenant]
    others = [v for t, v in values.items() if t != tenant]
    flagged, reasons = 0.0, []
    for f in FEATURES:
        x = mine[f.name]
        known = [v for o in others if (v := o[f.name]) is not None]
        median = statistics.median(known) if known else 0.0
        if x is not None and x >= f.floor and x >= 2 * median:
            flagged += f.weight
            reasons.append(f.describe(x, median))
    score = round(flagged / sum(f.weight for f in FEATURES), 4)
    level = "high" if score >= HIGH else "medium" if score >= MEDIUM else "low"
    return {"score": score, "level": level, "reasons": reasons}
