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
    """Replace every match of `pattern` accepted by `check` with `placeholder`.

    Patterns avoid leading look-behinds (they defeat the regex engine's fast scan); boundary checks that
    need the preceding character are done in `check`, which sees the match object.
    """

    def __init__(
        self,
        name: str,
        pattern: re.Pattern[str],
        placeholder: str,
        *,
        hints: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.placeholder = placeholder
        self.hints = hints  # cheap substring tests: skip the regex when none is present
        self.min_length = 6  # nothing shorter can hold an e-mail, phone, card or IBAN

    def check(self, m: re.Match[str]) -> bool:
        return True

    def redact(self, text: str) -> tuple[str, int]:
        if self.hints and not _contains_any(text, self.hints):
            return text, 0
        if self.pattern.search(text) is None:
            return text, 0
        count = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            if not self.check(m):
                return m.group(0)
            count += 1
            return self.placeholder

        out = self.pattern.sub(sub, text)
        return out, count


def _contains_any(text: str, needles: tuple[str, ...]) -> bool:
    for needle in needles:  # noqa: SIM110 (a plain loop: no generator on the hot path)
        if needle in text:
            return True
    return False


def _preceded_by(m: re.Match[str], chars: str) -> bool:
    start = m.start()
    return start > 0 and m.string[start - 1] in chars


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_DIGITS = "0123456789"


# -- secrets ---------------------------------------------------------------------------------
_SECRET_RE = re.compile(
    "|".join(
        f"(?:{p})"
        for p in (
            # PEM body: base64 and header lines; stops at the next "-----" so scanning stays linear
            r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.]|-(?!----))*+"
            r"-----END [A-Z ]{0,40}PRIVATE KEY-----",
            r"sk-[A-Za-z0-9_\-]{16,}",  # OpenAI / Anthropic style keys (sk-, sk-proj-, sk-ant-)
            r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![0-9A-Z])",  # AWS access key ids
            r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
            r"github_pat_[A-Za-z0-9_]{30,}",
            r"xox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack
            r"AIza[0-9A-Za-z_\-]{35}",  # Google API keys
            r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{8,}+\.eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}",  # JWTs
            r"[Bb](?i:earer)\s+[A-Za-z0-9._~+/\-]{16,}=*",  # Authorization: Bearer ...
        )
    )
)
_SECRET_HINTS = (
    "sk-", "AKIA", "ASIA", "ABIA", "ACCA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza",
    "eyJ", "PRIVATE KEY",
)  # fmt: skip
# Keywords are found with str.find (fast); the separator and value after one are matched in place.
_KEYWORDS = ("key", "token", "secret", "passw", "pwd", "passcode", "credential")
_PASSWORDS = ("passw", "pwd", "passcode")
_KEYWORD_PREFIXES = ("api", "access", "secret", "private", "auth", "client")
_TAIL_RE = re.compile(
    r"""[A-Za-z_\-]{0,12}(?:["']?[ \t]*([:=])[ \t]*["']?|[ \t]+(?:is[ \t]+|was[ \t]+)?["']?)([^\s"',;]{4,})"""
)


def _entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_secret(token: str) -> bool:
    """A random-looking value: letters with digits (or long mixed-case), not a word or snake_case name."""
    if token.startswith("[") and token.endswith("]"):
        return False  # already a placeholder
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    if has_digit and has_alpha:
        return len(token) >= 8 and _entropy(token) >= 2.5
    mixed_case = any(c.islower() for c in token) and any(c.isupper() for c in token)
    return mixed_case and len(token) >= 16 and _entropy(token) >= 3.5


class SecretsRedactor:
    """API keys, bearer tokens, cloud keys, private keys, and high-entropy values after key/token/password."""

    name = "secrets"
    placeholder = "[SECRET]"
    min_length = 6  # "pwd=abcd" is the shortest value replaced

    def redact(self, text: str) -> tuple[str, int]:
        count = 0
        low = text.lower()
        if _contains_any(text, _SECRET_HINTS) or "bearer" in low:

            def known(m: re.Match[str]) -> str:
                nonlocal count
                if _preceded_by(m, _ALNUM):
                    return m.group(0)
                count += 1
                return self.placeholder

            text = _SECRET_RE.sub(known, text)
            low = text.lower()
        spans = _keyword_spans(text, low)
        if not spans:
            return text, count
        parts: list[str] = []
        last = 0
        for start, end in spans:
            parts.append(text[last:start])
            parts.append(self.placeholder)
            last = end
        parts.append(text[last:])
        return "".join(parts), count + len(spans)


def _keyword_spans(text: str, low: str) -> list[tuple[int, int]]:
    """Spans of values that follow a secret-ish keyword and look like secrets (sorted, disjoint).

    Keyword hits inside a value already examined are skipped, which keeps long inputs linear.
    """
    hits: list[tuple[int, str]] = []
    for word in _KEYWORDS:
        idx = low.find(word)
        while idx != -1:
            hits.append((idx, word))
            idx = low.find(word, idx + len(word))
    if not hits:
        return []
    hits.sort()
    spans: list[tuple[int, int]] = []
    covered = 0
    for idx, word in hits:
        if idx < covered:
            continue
        if idx and low[idx - 1].isalpha() and not low.endswith(_KEYWORD_PREFIXES, 0, idx):
            continue  # inside a word ("monkey", "keyboard" is fine: no value follows)
        m = _TAIL_RE.match(text, idx + len(word))
        if m is None:
            continue
        covered = m.end(2)
        if _is_secret_value(word, m):
            spans.append((m.start(2), m.end(2)))
    return spans


def _is_secret_value(word: str, m: re.Match[str]) -> bool:
    value = m.group(2)
    if value.startswith("["):
        return False  # already a placeholder
    if word in _PASSWORDS and m.group(1):
        return True  # "password: hunter2" is a secret whatever its entropy
    return len(value) >= 8 and _looks_secret(value)


# -- e-mail ----------------------------------------------------------------------------------
EMAIL = RegexRedactor(
    "email",
    # bounded quantifiers (RFC 5321 lengths) keep the scan linear on long runs of word characters
    re.compile(
        r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z])"
    ),
    "[EMAIL]",
    hints=("@",),
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
    """13-19 digit numbers (spaces or dashes allowed) that pass the Luhn check."""

    def __init__(self) -> None:
        super().__init__("card", re.compile(r"[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])"), "[CARD]")

    def check(self, m: re.Match[str]) -> bool:
        if _preceded_by(m, _DIGITS + ".,"):
            return False
        digits = m.group(0).replace(" ", "").replace("-", "")
        return len(set(digits)) > 1 and luhn_ok(digits)


# -- IBAN (mod 97) ---------------------------------------------------------------------------
def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit() or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


class IbanRedactor(RegexRedactor):
    """IBANs, compact or in groups of four, that pass the ISO 13616 mod-97 check."""

    def __init__(self) -> None:
        super().__init__(
            "iban",
            re.compile(r"[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])"),
            "[IBAN]",
        )

    def check(self, m: re.Match[str]) -> bool:
        return not _preceded_by(m, _ALNUM) and iban_ok(m.group(0))


# -- phone numbers ---------------------------------------------------------------------------
_PHONE_EXACT = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}"  # (555) 123-4567
    r"|0\d{2,4}[ .\-]\d{3,4}[ .\-]?\d{3,4}"  # 020 7946 0958
    r"|\d{3}[.\-]\d{3}[.\-]\d{4}"  # 555-123-4567
    r")(?!\w)"
)


class PhoneRedactor(RegexRedactor):
    """International (+CC ...) numbers and separated national formats, 9-15 digits.

    A cheap pattern finds digit runs with separators; the exact formats are checked inside them.
    """

    def __init__(self) -> None:
        super().__init__("phone", re.compile(r"[+(0-9][0-9() .\-]{7,24}[0-9]"), "[PHONE]")

    def redact(self, text: str) -> tuple[str, int]:
        if self.pattern.search(text) is None:
            return text, 0
        count = 0

        def exact(m: re.Match[str]) -> str:
            nonlocal count
            if not 9 <= sum(c.isdigit() for c in m.group(0)) <= 15:
                return m.group(0)
            count += 1
            return self.placeholder

        def candidate(m: re.Match[str]) -> str:
            if _preceded_by(m, _ALNUM + "+"):
                return m.group(0)
            return _PHONE_EXACT.sub(exact, m.group(0))

        out = self.pattern.sub(candidate, text)
        return out, count


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


@lru_cache(maxsize=64)
def _min_length(redactors: tuple[Redactor, ...]) -> int:
    """Strings shorter than every redactor's `min_length` (optional attribute, default 1) are skipped."""
    return min(int(getattr(r, "min_length", 1)) for r in redactors)


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


@lru_cache(maxsize=2048)
def _redact_cached(redactors: tuple[Redactor, ...], text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    return _apply(redactors, text)


# Strings repeat across requests (system prompts, label lists, classification answers): redaction results
# are cached, bounded in count and size (<= 2048 x 32 KB in the worst case; typical entries are small).
CACHE_MIN, CACHE_MAX = 200, 32_768


def redact_text(text: str, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> str:
    """Redact one string, adding per-redactor counts into `counts`."""
    if not redactors or len(text) < _min_length(redactors):
        return text
    out, found = _redact_cached(redactors, text) if len(text) <= CACHE_MAX else _apply(redactors, text)
    for name, n in found:
        counts[name] = counts.get(name, 0) + n
    return out


# keys whose string values are structure, not content (never redacted)
_STRUCTURAL = frozenset({"role", "type", "id", "tool_call_id", "detail", "format", "finish_reason", "model"})
# keys whose values are always dropped, whatever the redaction switch says
SECRET_KEYS = frozenset(
    {
        "api_key", "api-key", "apikey", "x-api-key", "authorization", "password", "passwd", "secret",
        "client_secret", "access_token", "refresh_token",
    }
)  # fmt: skip


def redact_value(value: Any, redactors: tuple[Redactor, ...], counts: dict[str, int]) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, content parts, tool-call arguments)."""
    if isinstance(value, str):
        if value.startswith("data:") and ";base64," in value[:128]:
            return value  # inline media (base64): nothing textual to redact, and costly to scan
        return redact_text(value, redactors, counts)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _STRUCTURAL and isinstance(v, str):
                out[k] = v
            elif isinstance(k, str) and k.lower() in SECRET_KEYS:
                out[k] = "[SECRET]"
                counts["secrets"] = counts.get("secrets", 0) + 1
            else:
                out[k] = redact_value(v, redactors, counts)
        return out
    if isinstance(value, list):
        return [redact_value(v, redactors, counts) for v in value]
    return value


for _r in (SecretsRedactor(), IbanRedactor(), CardRedactor(), EMAIL, PhoneRedactor()):
    register(_r)
