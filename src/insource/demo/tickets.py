"""The demo's generative task: support tickets → a JSON of order id, product, issue type and urgency.

Generated here from hand-written templates (nothing copied from external datasets). `generate(n, seed)` is
deterministic for (n, seed) and records each ticket's gold extraction in a process-wide registry that the
simulated teacher consults (`gold_json`); tickets it never generated are read with the same rules
(`extract`), which recover every field of a generated ticket.
"""

from __future__ import annotations

import json
import random
import re
import threading

from insource.demo.templates import PRODUCTS

TASK = "ticket-extract"
ISSUES: dict[str, tuple[str, ...]] = {  # each reading names its issue, as a ticket form's field would
    "damaged": ("arrived damaged", "is damaged", "came damaged in the box"),
    "wrong_item": ("is the wrong item", "was the wrong item entirely", "came as the wrong item"),
    "missing": ("is missing", "went missing", "is missing from the parcel"),
    "late": ("is late", "is running late", "is two weeks late"),
    "billing": ("has a billing error", "caused a billing problem", "shows a billing mistake"),
}
URGENCY_CUES: dict[str, tuple[str, ...]] = {
    "high": ("URGENT:", "This is urgent!", "Urgent, please fix it today."),
    "medium": ("", "Can you look into it?", "What can you do?"),
    "low": ("No rush.", "Low priority, no rush.", "No rush at all, just letting you know."),
}
_OPENINGS = ("Hi,", "Hello,", "", "Good morning,", "Hey team,")
_FORMS = (
    "{open} my {product} (order {order}) {issue}. {cue}",
    "{open} order {order}: the {product} {issue}. {cue}",
    "{cue} {open} the {product} from order {order} {issue}.",
)
SYSTEM_PROMPT = (
    "Read the customer's support ticket and answer with one JSON object and nothing else: "
    '{"order_id": the order number like NW-123456, "product": the product as written in lower case, '
    f'"issue_type": one of {", ".join(ISSUES)}, "urgency": one of high, medium, low}}.'
)
_ORDER_RE = re.compile(r"NW-\d{6}")

_lock = threading.Lock()
_gold: dict[str, str] = {}
_REGISTRY_LIMIT = 200_000


def build_messages(text: str) -> list[dict[str, str]]:
    """The chat messages the demo sends to the teacher for one ticket."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def answer(order: str, product: str, issue: str, urgency: str) -> str:
    """The canonical JSON answer (compact, fixed key order), as the teacher writes it."""
    fields = {"order_id": order, "product": product, "issue_type": issue, "urgency": urgency}
    return json.dumps(fields, separators=(",", ":"))


def _find(text: str, table: dict[str, tuple[str, ...]], default: str) -> str:
    for name, phrases in table.items():
        if any(p and p.lower() in text for p in phrases):
            return name
    return default


def extract(text: str) -> str:
    """The extraction by rules: exact for every generated ticket, a best effort for others."""
    order = _ORDER_RE.search(text)
    lowered = text.lower()
    product = next((p for p in sorted(PRODUCTS, key=len, reverse=True) if p in lowered), "unknown")
    issue = _find(lowered, ISSUES, "other")
    urgency = _find(lowered, {k: v for k, v in URGENCY_CUES.items() if k != "medium"}, "medium")
    return answer(order.group(0) if order else "unknown", product, issue, urgency)


def gold_json(text: str) -> str:
    """The teacher's answer for a ticket: the registry's gold when `generate` made it, else `extract`."""
    with _lock:
        known = _gold.get(text)
    return known if known is not None else extract(text)


def drifted(gold: str) -> str:
    """A drifted teacher's answer: every urgency one step higher (high ones escalated), so none agrees."""
    fields = json.loads(gold)
    fields["urgency"] = {"low": "medium", "medium": "high", "high": "high"}[fields["urgency"]]
    if fields["urgency"] == "high":
        fields["issue_type"] = "escalated"
    return json.dumps(fields, separators=(",", ":"))


def is_ticket(messages: list[dict[str, object]]) -> bool:
    """Whether a chat request is the ticket-extraction task (its system prompt)."""
    return bool(messages) and messages[0].get("role") == "system" and messages[0].get("content") == SYSTEM_PROMPT


def generate(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (ticket, gold JSON) pairs, deterministic for (n, seed)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for _ in range(n):
        order = f"NW-{rng.randint(100_000, 999_999)}"
        product, issue, urgency = rng.choice(PRODUCTS), rng.choice(list(ISSUES)), rng.choice(list(URGENCY_CUES))
        form = rng.choice(_FORMS)
        text = form.format(
            open=rng.choice(_OPENINGS),
            product=product,
            order=order,
            issue=rng.choice(ISSUES[issue]),
            cue=rng.choice(URGENCY_CUES[urgency]),
        )
        text = " ".join(text.split())
        gold = answer(order, product, issue, urgency)
        with _lock:
            if len(_gold) < _REGISTRY_LIMIT:
                _gold[text] = gold
        out.append((text, gold))
    return out
