"""Template slots: separate a task's constant prompt boilerplate from its varying input.

`infer_template(message_lists)` looks at one task's captured prompts and finds
- constant messages: the same role and text in (nearly) every prompt at the same position (system prompt,
  instructions, label lists, few-shot examples);
- the slot: the message whose text varies (the last user message when conversations vary in length);
- a constant prefix/suffix inside the slot message ("Message: {input}\\nLabel:"). To avoid eating the start
  of real inputs that happen to agree, a prefix ends at a line break or a colon (plus spaces), and a suffix
  starts at a line break.

`Template.extract(messages)` returns the varying input of a new prompt (fast: string comparisons only) or,
when the prompt does not match the template, the last user message's text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from insource.errors import NotReady

CONSTANT_SHARE = 0.8  # a position is constant when this share of prompts agree on it
MIN_SAMPLES_FOR_AFFIXES = 3  # fewer prompts cannot tell boilerplate from coincidence


def message_text(message: Any) -> str:
    """The text of one chat message (string content, or the text parts of a content list)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


@dataclass(frozen=True, slots=True)
class ConstantPart:
    index: int
    role: str
    text: str


@dataclass(frozen=True)
class Template:
    constant: tuple[ConstantPart, ...] = ()
    slot: int | None = None  # the varying message's index; None: the last user message
    n_messages: int | None = None  # fixed conversation length, when the prompts have one
    prefix: str = ""
    suffix: str = ""
    samples: int = 0
    conforming: int = 0

    def matches(self, messages: Sequence[Any]) -> bool:
        if self.n_messages is not None and len(messages) != self.n_messages:
            return False
        for part in self.constant:
            if part.index >= len(messages):
                return False
            message = messages[part.index]
            if not isinstance(message, dict) or message.get("role") != part.role:
                return False
            if message_text(message) != part.text:
                return False
        return True

    def extract(self, messages: Any) -> str:
        """The varying input of a prompt; the last user message's text when it does not fit the template."""
        if not isinstance(messages, list | tuple):
            return ""
        if not self.matches(messages):
            return last_user_text(messages).strip()
        if self.slot is not None and self.slot < len(messages):
            text = message_text(messages[self.slot])
        else:
            text = last_user_text(messages)
        p, s = len(self.prefix), len(self.suffix)
        if len(text) >= p + s and text.startswith(self.prefix) and text.endswith(self.suffix):
            return text[p : len(text) - s].strip()
        return last_user_text(messages).strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "constant": [{"index": c.index, "role": c.role, "text": c.text} for c in self.constant],
            "slot": self.slot,
            "n_messages": self.n_messages,
            "prefix": self.prefix,
            "suffix": self.suffix,
            "samples": self.samples,
            "conforming": self.conforming,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        try:
            if data.get("version") != 1:
                raise ValueError(f"unsupported template version {data.get('version')!r}")
            constant = tuple(
                ConstantPart(int(c["index"]), str(c["role"]), str(c["text"])) for c in data.get("constant", [])
            )
            slot, n = data.get("slot"), data.get("n_messages")
            return cls(
                constant=constant,
                slot=None if slot is None else int(slot),
                n_messages=None if n is None else int(n),
                prefix=str(data.get("prefix", "")),
                suffix=str(data.get("suffix", "")),
                samples=int(data.get("samples", 0)),
                conforming=int(data.get("conforming", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotReady(f"invalid template: {exc}") from None


# -- inference -------------------------------------------------------------------------------
Shape = list[tuple[str, str]]  # (role, text) per message


def _shape(messages: Sequence[Any]) -> Shape:
    return [(str(m.get("role", "")) if isinstance(m, dict) else "", message_text(m)) for m in messages]


def _constant_positions(shapes: list[Shape], length: int) -> list[ConstantPart]:
    """Positions where at least CONSTANT_SHARE of the prompts carry the same role and text."""
    parts: list[ConstantPart] = []
    need = max(2, int(CONSTANT_SHARE * len(shapes) + 0.999999))
    for i in range(length):
        (role, text), count = Counter(s[i] for s in shapes if i < len(s)).most_common(1)[0]
        if count >= need:
            parts.append(ConstantPart(i, role, text))
    return parts


def _leading_constants(shapes: list[Shape]) -> list[ConstantPart]:
    """For conversations of varying length: the constant messages at the start (system prompt, shots)."""
    parts: list[ConstantPart] = []
    for part in _constant_positions(shapes, min(len(s) for s in shapes)):
        if part.index != len(parts):
            break
        parts.append(part)
    return parts


def _cut_prefix(common: str) -> str:
    """Shorten a common prefix so it ends at a line break or a colon (plus trailing spaces)."""
    cut = max(common.rfind("\n"), common.rfind(":"))
    if cut < 0:
        return ""
    end = cut + 1
    while end < len(common) and common[end] in " \t":
        end += 1
    return common[:end]


def _cut_suffix(common: str) -> str:
    """Shorten a common suffix so it starts at a line break."""
    start = common.find("\n")
    return "" if start < 0 else common[start:]


def _common_prefix(texts: list[str]) -> str:
    lo, hi = min(texts), max(texts)  # the common prefix of all is that of the extremes
    n = min(len(lo), len(hi))
    i = 0
    while i < n and lo[i] == hi[i]:
        i += 1
    return lo[:i]


def _affixes(texts: list[str]) -> tuple[str, str]:
    if len(texts) < MIN_SAMPLES_FOR_AFFIXES or len(set(texts)) < 2:
        return "", ""
    prefix = _cut_prefix(_common_prefix(texts))
    rest = [t[len(prefix) :] for t in texts]
    suffix = _cut_suffix(_common_prefix([t[::-1] for t in rest])[::-1])
    return prefix, suffix


def _slot_index(parts: list[ConstantPart], shape: Shape) -> int | None:
    constant = {p.index for p in parts}
    varying = [i for i in range(len(shape)) if i not in constant]
    users = [i for i in varying if shape[i][0] == "user"]
    if users:
        return users[-1]
    return varying[-1] if len(varying) == 1 else None


def infer_template(message_lists: Sequence[Sequence[Any]]) -> Template:
    """Infer a task's template from its captured prompts (lists of chat messages)."""
    shapes = [_shape(m) for m in message_lists if isinstance(m, list | tuple) and m]
    if not shapes:
        return Template()
    length, count = Counter(len(s) for s in shapes).most_common(1)[0]
    fixed = count >= CONSTANT_SHARE * len(shapes)
    if fixed:
        same = [s for s in shapes if len(s) == length]
        parts = _constant_positions(same, length) if len(same) >= 2 else []
        slot = _slot_index(parts, same[0])
        template = Template(constant=tuple(parts), slot=slot, n_messages=length)
    else:
        parts = _leading_constants(shapes) if len(shapes) >= 2 else []
        template = Template(constant=tuple(parts))
    conforming = [s for s in shapes if template.matches([{"role": r, "content": t} for r, t in s])]
    texts = [_slot_text(template, s) for s in conforming]
    prefix, suffix = _affixes(texts)
    return Template(
        constant=template.constant,
        slot=template.slot,
        n_messages=template.n_messages,
        prefix=prefix,
        suffix=suffix,
        samples=len(shapes),
        conforming=len(conforming),
    )


def _slot_text(template: Template, shape: Shape) -> str:
    if template.slot is not None and template.slot < len(shape):
        return shape[template.slot][1]
    for role, text in reversed(shape):
        if role == "user":
            return text
    return ""
