"""Prompt-template mining over all captured traffic, tagged or not.

One pass over the captures in (ts, id) order, a page at a time (memory stays flat whatever the store holds):

1. **Constant messages.** A message blob used by many captures (system prompt, instructions, few-shot examples)
   is constant text; every other message is a slot. The blob counts come from SQL, so this costs no parsing.
2. **Heads.** Inside the varying (slot) message, an instruction often leads ("Q: ...", "Translate to French:
   ..."). The head is the slot's text up to an early colon. Distinct heads of the same message layout are
   clustered with Drain (`drain3`, the maintained Drain implementation: token-wise templates with `<*>`
   wildcards; numbers become wildcards), each distinct head once.
3. **Groups.** (message layout, Drain cluster) is a group. Each group keeps running figures (requests, spend,
   answers, repeated inputs) and its first prompts, from which `capture.slots.infer_template` renders the
   template: constant messages as text, the slot as `prefix<*>suffix`. The template id is a hash of that text,
   so the same traffic gives the same ids on every run, and groups that render the same merge.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from insource.capture.slots import Template, infer_template, message_text
from insource.capture.stats import answer_key
from insource.errors import NotReady
from insource.store import Store
from insource.store.opportunities import capture_span, fetch_blobs, iter_capture_pages, repeating_blobs

SLOT = "<*>"
SAMPLES = 200  # prompts kept per group to render its template
MAX_ANSWERS = 10_000  # distinct answers counted per group (more: plainly not a label set)
MAX_INPUTS = 100_000  # distinct prompts remembered per group for the consistency check
MAX_HEAD = 200  # a head is an early colon: within this many characters of the slot's start
MAX_TAIL = 40  # a tail is a short last line ("A:", "Label:")
MAX_HEADS = 50_000  # distinct heads clustered with Drain; beyond, new heads go to their layout's catch-all group
MIN_GROUP = 3  # smaller groups are folded into their layout's catch-all group before rendering
MIN_CONSTANT_USES = 3  # a message used by at least this many captures (or 1 in 10,000) is constant text
MONTH_S = 30 * 86400.0
BLOB_CACHE = 50_000


@dataclass
class Group:
    """Running figures of one template's traffic."""

    requests: int = 0
    cost_usd: float = 0.0
    recent_cost_usd: float = 0.0  # within the last 30 days of the captured span
    tasks: Counter[str | None] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    overflow: bool = False  # more distinct answers than MAX_ANSWERS
    answer_chars: int = 0
    first_answers: dict[int, int] = field(default_factory=dict)  # hash(prompt) -> hash(first answer)
    repeats_same: int = 0
    repeats_differ: int = 0
    samples: list[list[Any]] = field(default_factory=list)

    def merge(self, other: Group) -> None:
        self.requests += other.requests
        self.cost_usd += other.cost_usd
        self.recent_cost_usd += other.recent_cost_usd
        self.tasks.update(other.tasks)
        for answer, n in other.answers.items():
            self._count_answer(answer, n)
        self.answered += other.answered
        self.overflow = self.overflow or other.overflow
        self.answer_chars += other.answer_chars
        self.repeats_same += other.repeats_same
        self.repeats_differ += other.repeats_differ
        self.samples.extend(other.samples[: max(0, SAMPLES - len(self.samples))])

    def _count_answer(self, answer: str, n: int = 1) -> None:
        if answer in self.answers or len(self.answers) < MAX_ANSWERS:
            self.answers[answer] += n
        else:
            self.overflow = True

    def add(self, messages: list[Any], prompt: int, row: Any, recent: bool) -> None:
        """Count one capture; `prompt` identifies its exact prompt (a hash of its message hashes)."""
        self.requests += 1
        cost = row["cost_usd"] or 0.0
        self.cost_usd += cost
        if recent:
            self.recent_cost_usd += cost
        self.tasks[row["task"]] += 1
        if len(self.samples) < SAMPLES:
            self.samples.append(messages)
        output = row["output"]
        if row["status"] != 200 or output is None or row["provider"] is None:  # a student's answer is no evidence
            return
        answer = answer_key(output)
        self.answered += 1
        self.answer_chars += len(answer)
        self._count_answer(answer)
        self._check_repeat(prompt, hash(answer))

    def _check_repeat(self, prompt: int, answer: int) -> None:
        first = self.first_answers.get(prompt)
        if first is None:
            if len(self.first_answers) < MAX_INPUTS:
                self.first_answers[prompt] = answer
        elif first == answer:
            self.repeats_same += 1
        else:
            self.repeats_differ += 1


@dataclass
class Mined:
    """One mined template: its id, rendered text, the inferred `Template` and its traffic."""

    template_id: str
    text: str
    template: Template
    group: Group
    head_pattern: str | None = None  # regex the slot starts with, when the instruction itself has a wildcard

    def stored(self) -> dict[str, Any]:
        """The template as stored for `tasks assign` (the `Template` dict, plus the head pattern if any)."""
        data = self.template.to_dict()
        if self.head_pattern is not None:
            data["head_pattern"] = self.head_pattern
        return data


@dataclass
class MineResult:
    templates: list[Mined]
    captures: int
    first_ts: float | None
    last_ts: float | None


def render(template: Template, sample: list[Any], head_text: str = "") -> str:
    """The template as text: constant messages verbatim, the slot as prefix<*>suffix (or `head_text <*>suffix`
    when the instruction has a wildcard of its own), other messages <*>."""
    constant = {c.index: c for c in template.constant}
    n = template.n_messages if template.n_messages is not None else len(sample)
    slot = template.slot
    if slot is None:
        users = [i for i in range(n) if i not in constant and _role(sample, i) == "user"]
        slot = users[-1] if users else None
    lines = []
    for i in range(n):
        if i in constant:
            lines.append(f"[{constant[i].role}] {constant[i].text}")
        elif i == slot:
            lead = f"{head_text} " if head_text else template.prefix
            lines.append(f"[{_role(sample, i)}] {lead}{SLOT}{template.suffix}")
        else:
            lines.append(f"[{_role(sample, i)}] {SLOT}")
    if template.n_messages is None:
        lines.append("(conversations of varying length)")
    return "\n".join(lines)


def _role(sample: list[Any], i: int) -> str:
    message = sample[i] if i < len(sample) else None
    return str(message.get("role", "")) if isinstance(message, dict) else ""


def template_id(text: str) -> str:
    return "t_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def head(text: str) -> str:
    """The instruction leading a slot: its first line up to an early colon (or nothing)."""
    first = text[: MAX_HEAD + 1].split("\n", 1)[0]
    cut = first.find(":")
    return first[: cut + 1] if cut >= 0 else ""


def tail(text: str) -> str:
    """The cue closing a slot: a short last line ("A:", "Label:"), or nothing."""
    cut = text.rfind("\n", max(0, len(text) - MAX_TAIL - 1))
    return text[cut + 1 :].strip() if cut >= 0 else ""


Shape = tuple[tuple[str, str], ...]  # (role, constant blob hash or "") per message
GroupKey = tuple[Shape, int, str]  # (shape, Drain cluster of the head, tail)


class Miner:
    """Groups captures by template as they stream by."""

    def __init__(self, constant: set[str], last_ts: float) -> None:
        try:
            from drain3.drain import Drain  # the analytics extra; never imported by the server
        except ImportError:
            raise NotReady('mining templates needs the [analytics] extra: pip install "insource[analytics]"') from None

        self.constant = constant
        self.recent_from = last_ts - MONTH_S
        self.drain = Drain(sim_th=0.5, depth=4, max_children=100)
        self.heads: dict[tuple[Shape, str], int] = {}
        self.groups: dict[GroupKey, Group] = {}
        self.blobs: dict[str, Any] = {}

    def add_page(self, store: Store, rows: list[Any]) -> None:
        hash_lists = [message_hashes(r["messages"]) for r in rows]
        blobs = self.blobs
        missing = {h for hs in hash_lists for h in hs if h not in blobs}
        found = fetch_blobs(store, sorted(missing)) if missing else {}
        for row, hashes in zip(rows, hash_lists, strict=True):
            messages = [blobs[h] if h in blobs else found.get(h) for h in hashes]
            self._add(row, hashes, messages)
        if len(blobs) < BLOB_CACHE:  # constant messages repeat: keep them (unique ones are not kept)
            blobs.update((h, m) for h, m in found.items() if h in self.constant)

    def _add(self, row: Any, hashes: list[str], messages: list[Any]) -> None:
        layout: list[tuple[str, str]] = []
        slot: Any = None
        constant = self.constant
        for h, message in zip(hashes, messages, strict=True):
            role = message.get("role", "") if type(message) is dict else ""
            if h in constant:
                layout.append((role, h))
            else:
                layout.append((role, ""))
                if role == "user" or slot is None:
                    slot = message
        if slot is None and layout:  # the same prompt sent again and again is input, not template: its last
            last = _last_user(layout)  # user message stays a slot (so a repeated message is never shown)
            layout[last] = (layout[last][0], "")
            slot = messages[last]
        shape = tuple(layout)
        text = message_text(slot) if slot is not None else ""
        key = (shape, self._cluster(shape, head(text)), tail(text))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group()
        group.add(messages, hash(tuple(hashes)), row, row["ts"] >= self.recent_from)

    def _cluster(self, shape: Shape, lead: str) -> int:
        known = self.heads.get((shape, lead))
        if known is None:
            if len(self.heads) >= MAX_HEADS:
                return -1
            layout = "|".join(f"{role}={h[:16] or '*'}" for role, h in shape)
            cluster, _ = self.drain.add_log_message(f"{layout} {lead}".strip())
            known = self.heads[(shape, lead)] = int(cluster.cluster_id)
        return known

    def _folded(self) -> dict[GroupKey, Group]:
        """Groups folded into their layout's catch-all group: those of fewer than MIN_GROUP requests (too few
        prompts to tell an instruction from a coincidence), and, when the layout has constant messages (the
        instruction is there), those whose head has a wildcard: "ticket 12: ..." is the input, not an instruction."""
        kept: dict[GroupKey, Group] = {}
        for (shape, cluster, end), group in self.groups.items():
            data_head = any(h for _, h in shape) and self._head_template(cluster) is not None
            small = group.requests < MIN_GROUP
            key = (shape, -1, "") if small or data_head else (shape, cluster, end)
            if key in kept:
                kept[key].merge(group)
            else:
                kept[key] = group
        return kept

    def _head_template(self, cluster: int) -> list[str] | None:
        """The Drain template of a head cluster (layout token dropped) when it has a wildcard, else None."""
        found = self.drain.id_to_cluster.get(cluster) if cluster >= 0 else None
        tokens = list(found.log_template_tokens[1:]) if found is not None else []
        return tokens if SLOT in tokens and any(t != SLOT for t in tokens) else None

    def results(self) -> list[Mined]:
        merged: dict[str, Mined] = {}
        for (_, cluster, _), group in self._folded().items():
            samples = [m for m in group.samples if all(isinstance(x, dict) for x in m)]
            template = infer_template(samples)
            tokens = self._head_template(cluster) if not template.prefix else None
            text = render(template, samples[0] if samples else [], " ".join(tokens) if tokens else "")
            tid = template_id(text)
            if tid in merged:
                merged[tid].group.merge(group)
            else:
                merged[tid] = Mined(tid, text, template, group, head_regex(tokens) if tokens else None)
        return list(merged.values())


def _last_user(layout: list[tuple[str, str]]) -> int:
    users = [i for i, (role, _) in enumerate(layout) if role == "user"]
    return users[-1] if users else len(layout) - 1


def head_regex(tokens: list[str]) -> str:
    """A Drain head template as a regex the slot text must start with (`<*>`: one whitespace-free token)."""
    return r"\s*" + r"\s+".join(r"\S+" if t == SLOT else re.escape(t) for t in tokens)


def message_hashes(messages_json: Any) -> list[str]:
    import orjson

    value = orjson.loads(messages_json) if isinstance(messages_json, str | bytes) else messages_json
    return [str(h) for h in value] if isinstance(value, list) else []


def mine(store: Store) -> MineResult:
    """Mine every capture's template (one streaming pass)."""
    count, first, last = capture_span(store)
    if count == 0 or first is None or last is None:
        return MineResult([], 0, None, None)
    constant = repeating_blobs(store, max(MIN_CONSTANT_USES, count // 10_000))
    miner = Miner(constant, last)
    for page in iter_capture_pages(store):
        miner.add_page(store, page)
    return MineResult(miner.results(), count, first, last)


def iter_prompts(store: Store, pages: Iterable[list[dict[str, Any]]]) -> Iterable[tuple[dict[str, Any], list[Any]]]:
    """(capture row, messages) of each capture in `pages`, message blobs resolved (repeated ones cached)."""
    cache: dict[str, Any] = {}
    for rows in pages:
        hash_lists = [message_hashes(r["messages"]) for r in rows]
        missing = sorted({h for hs in hash_lists for h in hs if h not in cache})
        found = fetch_blobs(store, missing) if missing else {}
        for row, hashes in zip(rows, hash_lists, strict=True):
            yield row, [cache.get(h, found.get(h)) for h in hashes]
        seen = Counter(h for hs in hash_lists for h in hs)
        if len(cache) < BLOB_CACHE:
            cache.update((h, m) for h, m in found.items() if seen[h] > 1)
