"""The demo's own data: customer-support intent classification for a fictional online shop.

Generated here from hand-written templates (:mod:`insource.demo.templates`); nothing is copied
from external datasets. `generate(n, seed)` is deterministic for a given (n, seed) and records each text's
gold label in a process-wide registry (`gold_label`) that the simulated teacher consults.
"""

from __future__ import annotations

import random
import re
import threading
from typing import Any

from insource.demo.templates import (
    AMBIGUOUS,
    CITIES,
    CLOSINGS,
    CODES,
    COLORS,
    CURRENCIES,
    DATES,
    DEADLINES,
    EMAIL_DOMAINS,
    FIRST_NAMES,
    GREETINGS,
    INTENT_DESCRIPTIONS,
    PRODUCTS,
    SIZES,
    TEMPLATES,
)

SHOP_NAME = "Northwind Goods"
INTENTS: tuple[str, ...] = tuple(INTENT_DESCRIPTIONS)
#: Relative frequency of each intent in generated traffic (support queues are skewed).
INTENT_WEIGHTS: dict[str, float] = {
    "order_status": 16,
    "refund_request": 10,
    "return_item": 9,
    "cancel_order": 8,
    "damaged_item": 7,
    "wrong_item": 6,
    "payment_failed": 6,
    "change_address": 5,
    "exchange_item": 5,
    "account_access": 5,
    "product_availability": 5,
    "shipping_options": 5,
    "discount_code": 5,
    "invoice_request": 4,
    "speak_to_agent": 4,
}
DEFAULT_AMBIGUOUS_SHARE = 0.04
_REGISTRY_LIMIT = 2_000_000

SYSTEM_PROMPT = (
    f"You are the customer-support triage assistant of {SHOP_NAME}, an online shop. "
    "Classify the customer's message into exactly one of these intents:\n"
    + "\n".join(f"- {name}: {desc}" for name, desc in INTENT_DESCRIPTIONS.items())
    + "\nIf several apply, pick the one the customer most needs handled first. "
    "Answer with the intent label only."
)

_CONTEXT = [
    "Quick question.",
    "I've been a customer for years.",
    "This is my second message about this.",
    "Sorry to bother you.",
    "I'm writing from my phone.",
    "Hope you can help.",
]
_KEYBOARD_NEIGHBOURS = {"a": "s", "e": "r", "i": "o", "o": "p", "n": "m", "r": "t", "s": "d", "t": "y"}

_lock = threading.Lock()
_gold: dict[str, str] = {}
_alternatives: dict[str, str] = {}


def build_messages(text: str) -> list[dict[str, Any]]:
    """The chat messages the demo sends to the teacher for one customer message."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def gold_label(text: str) -> str | None:
    """The gold intent of a text produced by `generate` in this process, else None."""
    with _lock:
        return _gold.get(text)


def ambiguous_alternative(text: str) -> str | None:
    """For a generated ambiguous message, the plausible second label; else None."""
    with _lock:
        return _alternatives.get(text)


def _order_number(rng: random.Random) -> str:
    digits = str(rng.randint(1_000_000, 9_999_999))
    return rng.choice([f"#{digits}", digits, f"NW-{digits[:6]}", f"#NW{digits}"])


def _amount(rng: random.Random) -> str:
    cur = rng.choice(CURRENCIES)
    whole = rng.randint(5, 320)
    cents = rng.choice(["", ".00", ".99", ".50", f".{rng.randint(10, 98)}"])
    return f"{cur}{whole}{cents}"


def _slots(rng: random.Random) -> dict[str, str]:
    return {
        "product": rng.choice(PRODUCTS),
        "order": _order_number(rng),
        "date": rng.choice(DATES),
        "deadline": rng.choice(DEADLINES),
        "days": str(rng.randint(2, 21)),
        "amount": _amount(rng),
        "city": rng.choice(CITIES),
        "code": rng.choice(CODES),
        "size": rng.choice(SIZES),
        "color": rng.choice(COLORS),
        "email": f"{rng.choice(FIRST_NAMES)}{rng.randint(1, 99)}@{rng.choice(EMAIL_DOMAINS)}",
        "item_count": str(rng.randint(2, 5)),
    }


def _typo(text: str, rng: random.Random) -> str:
    """One realistic typo in a random word of 4+ letters: swap, drop, double or neighbour key."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 1)
    op = rng.randrange(4)
    if op == 0:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif op == 1:
        w = w[:j] + w[j + 1 :]
    elif op == 2:
        w = w[:j] + w[j] + w[j:]
    else:
        w = w[:j] + _KEYBOARD_NEIGHBOURS.get(w[j], w[j]) + w[j + 1 :]
    words[i] = w
    return " ".join(words)


def _stylize(text: str, rng: random.Random) -> str:
    """Politeness, context, casing, punctuation and typo variations."""
    if rng.random() < 0.12:
        text = f"{rng.choice(_CONTEXT)} {text}"
    if rng.random() < 0.35:
        text = f"{rng.choice(GREETINGS)} {text}"
    if rng.random() < 0.3:
        text = f"{text} {rng.choice(CLOSINGS)}"
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.15:
        text = re.sub(r"[.!?]+$", "", text)
    if rng.random() < 0.04:
        text = f"{text}!!" if rng.random() < 0.5 else f"URGENT: {text}"
    for _ in range(2):
        if rng.random() < 0.15:
            text = _typo(text, rng)
    return text


def _register(text: str, label: str, alternative: str | None) -> None:
    with _lock:
        if len(_gold) >= _REGISTRY_LIMIT or text in _gold:
            return
        _gold[text] = label
        if alternative is not None:
            _alternatives[text] = alternative


def generate(n: int, seed: int, ambiguous_share: float = DEFAULT_AMBIGUOUS_SHARE) -> list[tuple[str, str]]:
    """`n` (text, intent) pairs, deterministic for (n, seed); about `ambiguous_share` are ambiguous."""
    if n < 0 or not 0 <= ambiguous_share <= 1:
        raise ValueError("n must be >= 0 and ambiguous_share in [0, 1]")
    rng = random.Random(seed)
    labels = list(INTENT_WEIGHTS)
    weights = list(INTENT_WEIGHTS.values())
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for _ in range(n):
        text, label, alternative = "", "", None
        for _attempt in range(4):  # prefer a text not yet produced in this batch
            if rng.random() < ambiguous_share:
                template, label, alternative = rng.choice(AMBIGUOUS)
            else:
                label = rng.choices(labels, weights)[0]
                template, alternative = rng.choice(TEMPLATES[label]), None
            text = _stylize(template.format(**_slots(rng)), rng)
            if text not in seen:
                break
        seen.add(text)
        _register(text, label, alternative)
        out.append((text, label))
    return out
