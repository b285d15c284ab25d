"""SimulatedTeacher: a stand-in for a paid LLM labelling the demo's support messages.

It is plainly a simulation: it reports `system_fingerprint` "fp_insource_simulated" and `describe()`
says so. It answers the gold intent of messages produced by :func:`insource.demo.data.generate`
(or taught with `learn`), falls back to keyword rules for unknown text, makes a small share of mistakes
(wrong label, and the second reading of ambiguous messages), and when attached to a FakeUpstream adds
realistic latency and a small 5xx rate.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from insource.demo import data as demo_data
from insource.demo import tickets

if TYPE_CHECKING:
    from insource.testing.fake_upstream import FakeUpstream

FINGERPRINT = "fp_insource_simulated"
#: gpt-4o-mini list prices in USD per 1M tokens (the model this teacher imitates).
PRICE_PER_MTOK = {"input": 0.15, "cached_input": 0.075, "output": 0.60}
FALLBACK_LABEL = "speak_to_agent"

# (label, patterns): each matching pattern scores one point; ties go to the earlier label.
_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("discount_code", (r"\bcode\b", r"promo", r"discount", r"voucher", r"coupon", r"gift card", r"balance")),
    (
        "cancel_order",
        (
            r"cancel",
            r"\bvoid\b",
            r"don'?t send",
            r"stop order",
            r"changed my mind",
            r"ordered by mistake",
            r"placed it twice",
        ),
    ),
    ("refund_request", (r"refund", r"money back", r"\bget .{0,20} back\b", r"reimburs", r"\bpaid\b.*\bback")),
    (
        "exchange_item",
        (
            r"exchange",
            r"\bswap",
            r"\btrade\b",
            r"bigger size",
            r"instead of the",
            r"too small",
            r"change the size",
            r"another colou?r",
            r"need size",
        ),
    ),
    (
        "wrong_item",
        (
            r"wrong (item|model|size|colou?r)",
            r"got something else",
            r"missing",
            r"someone else'?s",
            r"came without",
            r"isn'?t what i ordered",
            r"never showed up",
            r"only \d+ of",
            r"sent me a",
            r"the rest of order",
            r"size sent",
        ),
    ),
    ("return_item", (r"\breturn", r"send (it |them |the \w+ )?back", r"drop off", r"return label", r"returnable")),
    ("invoice_request", (r"invoice", r"receipt", r"\bvat\b")),
    (
        "damaged_item",
        (
            r"broke",
            r"damag",
            r"defect",
            r"scratch",
            r"crack",
            r"stopped working",
            r"shatter",
            r"\btear\b",
            r"faulty",
            r"ruined",
            r"smashed",
            r"bent",
            r"weird noise",
            r"won'?t turn on",
            r"arrived wet",
        ),
    ),
    (
        "payment_failed",
        (
            r"declin",
            r"payment",
            r"charged",
            r"charges",
            r"checkout",
            r"transaction",
            r"\bcard\b",
            r"paypal",
            r"apple pay",
        ),
    ),
    (
        "account_access",
        (
            r"log ?in",
            r"password",
            r"\blocked",
            r"(?<!bank )account",
            r"two-factor code",
            r"sign in",
            r"two-factor",
            r"logg(ed|ing)",
            r"reset link",
        ),
    ),
    (
        "change_address",
        (
            r"address",
            r"ship .{0,30} to .{0,20} instead",
            r"redirect",
            r"postcode",
            r"apartment number",
            r"street",
            r"\bmoved\b",
            r"be in \w+ next week",
            r"pickup point",
            r"neighbour",
        ),
    ),
    (
        "product_availability",
        (
            r"in stock",
            r"restock",
            r"sold out",
            r"pre-?order",
            r"available",
            r"discontinued",
            r"have left",
            r"do you (sell|still make)",
            r"in size",
        ),
    ),
    (
        "shipping_options",
        (
            r"shipping(?! confirmation)",
            r"express",
            r"internationally",
            r"next day",
            r"courier",
            r"standard delivery",
            r"deliver on",
            r"\bship (to|a|an)\b",
            r"pick up",
            r"po box",
            r"arrive by",
            r"cost to ship",
            r"in store",
        ),
    ),
    (
        "speak_to_agent",
        (
            r"human",
            r"real person",
            r"phone number",
            r"by phone",
            r"\bagent\b",
            r"\bbot\b",
            r"complaint",
            r"manager",
            r"call me",
            r"live chat",
            r"support team",
            r"a person",
            r"get me someone",
            r"transfer me",
            r"talk to someone",
        ),
    ),
    (
        "order_status",
        (
            r"where is",
            r"track",
            r"arriv",
            r"status",
            r"shipped",
            r"on its way",
            r"hasn'?t",
            r"still waiting",
            r"parcel",
            r"package",
            r"any (news|update)",
            r"how long until",
            r"deliver",
            r"get here",
            r"confirmation",
            r"label created",
            r"placed an order",
            r"tracking number",
        ),
    ),
]
#: Generic labels whose cues are weaker evidence than a specific label's.
_LABEL_WEIGHT = {"order_status": 0.6, "shipping_options": 0.8}
_COMPILED = [(label, [re.compile(p) for p in pats]) for label, pats in _RULES]
#: Words the rules depend on; a word one typo away from one of these is read as it (symmetric deletes).
_KEYWORDS = [
    "refund",
    "refunds",
    "return",
    "returns",
    "cancel",
    "invoice",
    "receipt",
    "coupons",
    "coupon",
    "code",
    "password",
    "account",
    "accounts",
    "exchange",
    "shipping",
    "tracking",
    "delivered",
    "delivery",
    "broken",
    "damaged",
    "wrong",
    "missing",
    "payment",
    "charges",
    "charged",
    "declined",
    "address",
    "stock",
    "available",
    "agent",
    "human",
    "person",
    "courier",
    "parcel",
    "package",
    "arrived",
    "status",
    "order",
    "item",
    "money",
    "back",
    "cost",
    "ship",
    "small",
    "size",
    "label",
    "voucher",
    "promo",
    "discount",
    "scratch",
    "cracked",
    "faulty",
    "restock",
    "bank",
    "blocked",
    "card",
    "model",
    "smashed",
    "long",
]


def _deletes(word: str) -> set[str]:
    return {word} | {word[:i] + word[i + 1 :] for i in range(len(word))}


_FUZZY: dict[str, str] = {}
for _kw in (k for k in _KEYWORDS if len(k) >= 5):  # short words collide too easily
    for _variant in _deletes(_kw):
        _FUZZY.setdefault(_variant, _kw)
_WORD_RE = re.compile(r"[a-z]{4,}")  # a 4-letter typo of a 5-letter keyword


def _correct_typos(lowered: str) -> str:
    """Replace words within one edit (drop, insert, substitute, swap) of a rule keyword by the keyword."""

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        if word in _FUZZY and _FUZZY[word] == word:
            return word
        for variant in _deletes(word) | _swaps(word):
            hit = _FUZZY.get(variant)
            if hit is not None and abs(len(hit) - len(word)) <= 1:
                return hit
        return word

    return _WORD_RE.sub(fix, lowered)


def _swaps(word: str) -> set[str]:
    return {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)}


_PREFIX_RE = re.compile(r"^\s*(customer message|message|text)\s*:\s*", re.IGNORECASE)


def keyword_label(text: str) -> str:
    """Rule-based intent for text the teacher has never seen (lower accuracy than the gold map)."""
    lowered = _correct_typos(text.lower())
    best, best_score = FALLBACK_LABEL, 0.0
    for label, patterns in _COMPILED:
        score = _LABEL_WEIGHT.get(label, 1.0) * sum(1 for p in patterns if p.search(lowered))
        if score > best_score:
            best, best_score = label, score
    return best


def customer_text(messages: list[dict[str, Any]]) -> str:
    """The customer message inside a demo prompt: the last user message, minus a 'Customer message:' tag."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = _PREFIX_RE.sub("", str(content or ""), count=1).strip()
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
                text = text[1:-1]
            return text
    return ""


class SimulatedTeacher:
    """A FakeUpstream responder imitating gpt-4o-mini labelling the demo's support messages."""

    model = "gpt-4o-mini"
    system_fingerprint = FINGERPRINT

    def __init__(
        self,
        *,
        error_rate: float = 0.01,
        server_error_rate: float = 0.005,
        ambiguous_flip_rate: float = 0.3,
        latency_mean_s: float = 0.25,
        latency_sigma: float = 0.35,
        speed: float = 1.0,
        seed: int = 0,
        use_registry: bool = True,
    ) -> None:
        """`error_rate`: share of answers replaced by a wrong label; `ambiguous_flip_rate`: share of
        ambiguous messages answered with their second reading; `speed` scales latency (0 = none);
        `use_registry`: consult labels recorded by demo_data.generate in this process."""
        for name, value in (
            ("error_rate", error_rate),
            ("server_error_rate", server_error_rate),
            ("ambiguous_flip_rate", ambiguous_flip_rate),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if latency_mean_s < 0 or latency_sigma < 0 or speed < 0:
            raise ValueError("latency_mean_s, latency_sigma and speed must be >= 0")
        self.error_rate = error_rate
        self.server_error_rate = server_error_rate
        self.ambiguous_flip_rate = ambiguous_flip_rate
        self.latency_mean_s = latency_mean_s
        self.latency_sigma = latency_sigma
        self.speed = speed
        self.use_registry = use_registry
        self._seed = seed
        self._rng = random.Random(seed)
        self._latency_rng = random.Random(seed + 1)
        self._lock = threading.Lock()
        self._known: dict[str, str] = {}
        self.answered = 0
        self.injected_errors = 0
        self.ticket_drift = False  # True: its ticket extractions change (`tickets.drifted`), as a teacher may drift

    def learn(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Teach gold labels for texts (e.g. pairs generated in another process)."""
        with self._lock:
            self._known.update(pairs)

    def gold(self, text: str) -> str:
        """The label this teacher believes is right for `text` (no injected errors)."""
        with self._lock:
            known = self._known.get(text)
        if known is not None:
            return known
        if self.use_registry:
            registered = demo_data.gold_label(text)
            if registered is not None:
                return registered
        return keyword_label(text)

    def classify(self, text: str) -> str:
        """The teacher's answer for `text`, including its deliberate mistakes."""
        label = self.gold(text)
        alternative = demo_data.ambiguous_alternative(text) if self.use_registry else None
        with self._lock:
            self.answered += 1
            if alternative is not None and self._rng.random() < self.ambiguous_flip_rate:
                return alternative
            if self._rng.random() < self.error_rate:
                self.injected_errors += 1
                return self._rng.choice([i for i in demo_data.INTENTS if i != label])
        return label

    def extract(self, text: str) -> str:
        """The teacher's JSON extraction of a support ticket (the generative task); drifted on request."""
        with self._lock:
            self.answered += 1
        gold = tickets.gold_json(text)
        return tickets.drifted(gold) if self.ticket_drift else gold

    def __call__(self, model: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        if tickets.is_ticket(messages):
            return self.extract(customer_text(messages))
        return self.classify(customer_text(messages))

    def sample_latency(self) -> float:
        """Seconds before the first byte: log-normal around `latency_mean_s * speed`."""
        mean = self.latency_mean_s * self.speed
        if mean <= 0:
            return 0.0
        mu = math.log(mean) - self.latency_sigma**2 / 2
        with self._lock:
            return self._latency_rng.lognormvariate(mu, self.latency_sigma)

    def attach(self, upstream: FakeUpstream) -> FakeUpstream:
        """Make `upstream` answer as this teacher: responder, fingerprint, latency and 5xx rate."""
        upstream.responder = self
        upstream.system_fingerprint = FINGERPRINT
        upstream.delay_fn = self.sample_latency
        upstream.error_rate = self.server_error_rate
        upstream.error_status = 500
        return upstream

    def describe(self) -> str:
        return (
            "SIMULATED teacher (not a real LLM): imitates gpt-4o-mini labelling customer-support messages "
            f"for the fictional shop {demo_data.SHOP_NAME} into {len(demo_data.INTENTS)} intents. "
            "It answers the gold label of messages generated by insource.demo.data, keyword rules "
            f"otherwise; wrong-label rate {self.error_rate:.1%}, ambiguous second-reading rate "
            f"{self.ambiguous_flip_rate:.0%}, HTTP 500 rate {self.server_error_rate:.1%}, latency "
            f"~{self.latency_mean_s * self.speed * 1000:.0f} ms mean (speed x{self.speed:g}). "
            f"Priced like gpt-4o-mini: ${PRICE_PER_MTOK['input']}/1M input, "
            f"${PRICE_PER_MTOK['output']}/1M output tokens. system_fingerprint={FINGERPRINT}. "
            "Support tickets with the extraction prompt get their JSON (order id, product, issue type, urgency) "
            "read from the ticket by rules."
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m insource.demo.teacher --port 9000``: the fake upstream answering as this simulated teacher
    (every fake-upstream option applies, plus ``--teacher-speed``)."""
    import argparse
    import sys

    from insource.testing.fake_upstream import build_parser
    from insource.testing.fake_upstream import main as run_upstream

    parser = build_parser()
    parser.prog = "python -m insource.demo.teacher"
    parser.description = "Run the demo's SIMULATED teacher (a fake OpenAI upstream labelling support messages)."
    parser.add_argument("--teacher-speed", type=float, default=1.0, help="teacher latency factor (0 = none)")

    def attach(upstream: FakeUpstream, args: argparse.Namespace) -> None:
        if args.teacher_speed < 0:
            parser.error("--teacher-speed must be >= 0")
        teacher = SimulatedTeacher(speed=args.teacher_speed, seed=args.seed)
        teacher.attach(upstream)
        print(teacher.describe(), file=sys.stderr)

    return run_upstream(argv, parser=parser, attach=attach)


if __name__ == "__main__":
    raise SystemExit(main())
