"""Pluggable redactors: secrets and personal data are replaced by placeholders before anything is written.

A redactor is any object with a `name` and `redact(text) -> (text, count)`. Built-ins are registered here;
an embedding application may `register()` its own (selected by name from `[capture] redactors`; names are
never turned into imports). Built-ins run in a fixed order (secrets, iban, card, email, phone) so that a
card number is never half-eaten by the phone pattern; other redactors run after them, in config order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from insource.errors import ConfigError


@runtime_checkable
class Redactor(Protocol):
    name: str

    def redact(self, text: str) -> tuple[str, int]: ...


class RegexRedactor:
    """Replace every match of `pattern` accepted by `check` with `placeholder`."""

    def __init__(
        self,
        name: str,
        pattern: re.Pattern[str],
        placeholder: str,
        *,
        hint: str | None = None,
        group: int = 0,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.placeholder = placeholder
        self.hint = hint  # a cheap substring test: skip the regex when absent
        self.group = group

    def check(self, match: str) -> bool:
        return True

    def redact(self, text: str) -> tuple[str, int]:
        if self.hint is not None and self.hint not in text:
            return text, 0
        count = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            value = m.group(self.group)
            if not self.check(value):
                return m.group(0)
            count += 1
            if self.group == 0:
                return self.placeholder
            start, end = m.start(self.group) - m.start(0), m.end(self.group) - m.start(0)
            whole = m.group(0)
            return whole[:start] + self.placeholder + whole[end:]

        out = self.pattern.sub(sub, text)
        return out, count


# -- secrets ---------------------------------------------------------------------------------
_SECRET_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}",  # OpenAI / Anthropic style keys (sk-, sk-proj-, sk-ant-)
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![0-9A-Z])",  # AWS access key ids
    r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"(?<![A-Za-z0-9])github_pat_[A-Za-z0-9_]{30,}",
    r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack
    r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"(?<![A-Za-z0-9])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWTs
    r"\b[Bb](?i:earer)\s+[A-Za-z0-9._~+/\-]{16,}=*",
]
_SECRET_RE = re.compile("|".join(f"(?:{p})" for p in _SECRET_PATTERNS))
# A long token right after a secret-ish keyword ("password: x", "api_key=...", "token is ...").
_KEYWORD_RE = re.compile(
    r"(?i)(?:api[_\- ]?key|access[_\- ]?key|secret(?:[_\- ]?key)?|token|password|passwd|pwd|credential)s?"
    r"""(?:["']?\s*[:=]\s*["']?|\s+(?:is|was|=)?\s*["']?)"""
    r"""([^\s"',;]{8,})"""
)

# An explicit password assignment is redacted whatever its entropy ("password: hunter2").
_PASSWORD_RE = re.compile(r"""(?i)\b(?:password|passwd|pwd|passcode)\s*[:=]\s*["']?([^\s"',;\[][^\s"',;]{3,})""")


def _entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_secret(token: str) -> bool:
    """High-entropy and mixed: letters plus digits or symbols, not a plain word."""
    if token.startswith("[") and token.endswith("]"):
        return False  # already a placeholder
    classes = sum(
        (
            any(c.islower() for c in token),
            any(c.isupper() for c in token),
            any(c.isdigit() for c in token),
            any(not c.isalnum() for c in token),
        )
    )
    if len(token) >= 12 and classes >= 2 and _entropy(token) >= 3.0:
        return True
    return len(token) >= 8 and classes >= 3 and _entropy(token) >= 2.5


class SecretsRedactor:
    name = "secrets"
    placeholder = "[SECRET]"

    def redact(self, text: str) -> tuple[str, int]:
        out, n1 = _SECRET_RE.subn(self.placeholder, text)
        count = n1

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            token = m.group(1)
            if not _looks_secret(token):
                return m.group(0)
            count += 1
            whole = m.group(0)
            return whole[: m.start(1) - m.start(0)] + self.placeholder + whole[m.end(1) - m.start(0) :]

        out = _KEYWORD_RE.sub(sub, out)
        out, n2 = _PASSWORD_RE.subn(self._password_sub, out)
        return out, count + n2

    def _password_sub(self, m: re.Match[str]) -> str:
        whole = m.group(0)
        return whole[: m.start(1) - m.start(0)] + self.placeholder


# -- e-mail ----------------------------------------------------------------------------------
EMAIL = RegexRedactor(
    "email",
    re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    "[EMAIL]",
    hint="@",
)


# -- cards (Luhn) ----------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class CardRedactor(RegexRedactor):
    def __init__(self) -> None:
        super().__init__("card", re.compile(r"(?<![\d.,])\d(?:[ \-]?\d){12,18}(?![\d])"), "[CARD]")

    def check(self, match: str) -> bool:
        digits = match.replace(" ", "").replace("-", "")
        return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


# -- IBAN (mod 97) ---------------------------------------------------------------------------
def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


class IbanRedactor(RegexRedactor):
    def __init__(self) -> None:
        super().__init__(
            "iban",
            re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b"),
            "[IBAN]",
        )

    def check(self, match: str) -> bool:
        return iban_ok(match)


# -- phone numbers ---------------------------------------------------------------------------
class PhoneRedactor(RegexRedactor):
    """International (+CC ...) numbers and separated national formats with 9-15 digits."""

    def __init__(self) -> None:
        pattern = re.compile(
            r"(?<![\w+])(?:"
            r"\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}"  # +44 20 7946 0958
            r"|\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}"  # (555) 123-4567
            r"|0\d{2,4}[ .\-]\d{3,4}[ .\-]?\d{3,4}"  # 020 7946 0958
            r"|\d{3}[.\-]\d{3}[.\-]\d{4}"  # 555-123-4567
            r")(?![\w])"
        )
        super().__init__("phone", pattern, "[PHONE]")

    def check(self, match: str) -> bool:
        digits = sum(c.isdigit() for c in match)
        return 9 <= digits <= 15


# -- registry --------------------------------------------------------------------------------
BUILTIN_ORDER = ("secrets", "iban", "card", "email", "phone")
_REGISTRY: dict[str, Redactor] = {}


def register(redactor: Redactor) -> None:
    """Make a redactor selectable by name in `[capture] redactors`."""
    if not isinstance(redactor, Redactor) or not redactor.name:
        raise TypeError("a redactor needs a non-empty `name` and a `redact(text) -> (text, count)` method")
    _REGISTRY[redactor.name] = redactor
    _resolve.cache_clear()
    _redact_cached.cache_clear()


def available() -> list[str]:
    return sorted(_REGISTRY)


@lru_cache(maxsize=64)
def _resolve(names: tuple[str, ...]) -> tuple[Redactor, ...]:
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ConfigError(
            f"unknown redactor(s) {', '.join(repr(n) for n in unknown)} in [capture] redactors "
            f"(available: {', '.join(available())})"
        )
    builtin = [n for n in BUILTIN_ORDER if n in names]
    extra = [n for n in dict.fromkeys(names) if n not in BUILTIN_ORDER]
    return tuple(_REGISTRY[n] for n in (*builtin, *extra))


def get_redactors(names: Iterable[str]) -> tuple[Redactor, ...]:
    """Resolve redactor names (raises ConfigError naming unknown ones)."""
    return _resolve(tuple(names))


def check_redactors(names: Iterable[str]) -> None:
    """Validate `[capture] redactors` at startup so a typo fails loudly, not in the writer thread."""
    get_redactors(names)


def _apply(redactors: tuple[Redactor, ...], text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    counts: list[tuple[str, int]] = []
    for r in redactors:
        text, n = r.redact(text)
        if n:
            counts.append((r.name, n))
    return text, tuple(counts)


@lru_cache(maxsize=4096)
def _redact_cached(redactors: tuple[Redactor, ...], text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    return _apply(redactors, text)


_CACHE_MIN = 200  # long strings (system prompts, instructions) repeat; cache their redaction


def redact_text(text: str, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> str:
    """Redact one string, adding per-redactor counts into `counts`."""
    if not text or not redactors:
        return text
    out, found = _redact_cached(redactors, text) if len(text) >= _CACHE_MIN else _apply(redactors, text)
    for name, n in found:
        counts[name] = counts.get(name, 0) + n
    return out


# keys whose string values are structure, not content (never redacted)
_STRUCTURAL = frozenset({"role", "type", "id", "tool_call_id", "detail", "format", "finish_reason"})
# keys whose values are always dropped, whatever the redaction switch says
SECRET_KEYS = re.compile(
    r"(?i)^(?:api[_\-]?key|x-api-key|authorization|password|passwd|secret|client_secret|access_token|refresh_token)$"
)


def redact_value(value: Any, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, content parts, tool-call arguments)."""
    if isinstance(value, str):
        if value.startswith("data:") and ";base64," in value[:128]:
            return value  # inline media (base64): nothing textual to redact, and costly to scan
        return redact_text(value, redactors, counts)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and SECRET_KEYS.match(k):
                out[k] = "[SECRET]"
                counts["secrets"] = counts.get("secrets", 0) + 1
            elif k in _STRUCTURAL and isinstance(v, str):
                out[k] = v
            else:
                out[k] = redact_value(v, redactors, counts)
        return out
    if isinstance(value, list):
        return [redact_value(v, redactors, counts) for v in value]
    return value


for _r in (SecretsRedactor(), IbanRedactor(), CardRedactor(), EMAIL, PhoneRedactor()):
    register(_r)
