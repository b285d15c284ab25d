"""The `secrets` redactor: API keys, tokens, private keys, passwords (in URLs or after a keyword).

Rules, in order (every one linear in the text; placeholders are never matched again):

1. Known formats, matched whole from their first prefix character (so `isk-` or `gsk_` is found even though
   the `sk` inside is preceded by a letter) and refused when glued to a letter or digit before them:
   insource's own `isk-` keys, OpenAI/Anthropic `sk-`, Stripe `sk_/rk_live_|test_` and `whsec_`, Hugging Face
   `hf_`, GitLab `glpat-`, Groq `gsk_`, xAI `xai-`, npm `npm_`, Twilio `SK` + 32 hex, SendGrid `SG.x.y`,
   GitHub, Slack, Google `AIza`, JWTs, `Bearer ...`, AWS key ids (with the 40-character secret when it follows
   the id after a separator), PEM private keys (also with `\\n` escaped inside JSON strings).
2. Passwords in URLs: `scheme://user:PASS@host` -> `scheme://user:[SECRET]@host` (`redis://:PASS@host` too).
3. Azure-style keys: 32 hex digits (one case) with `key`, `subscription`, `azure` or `ocp-apim` in the
   48 characters before them.
4. AWS secret access keys on their own: exactly 40 characters of `[A-Za-z0-9/+]` not part of a longer
   base64 run, with upper and lower case letters (two or more each) and a digit, no lowercase run longer than
   six letters (CamelCase words), and entropy >= 4.3 bits/char (random keys: 99% above it; hex hashes,
   paths and identifiers fall below or fail the letter tests).
5. A random-looking value after a keyword (`api_key=...`, `token: ...`, `password is ...`; quotes may be
   backslash-escaped, as in JSON inside JSON); any value after `password:`/`pwd=` whatever its entropy.
"""

from __future__ import annotations

import re

from insource.capture.redact_base import ALNUM, contains_any, entropy, preceded_by

PLACEHOLDER = "[SECRET]"

_KNOWN_RE = re.compile(
    "|".join(
        f"(?:{p})"
        for p in (
            # PEM body: base64, header lines, escaped newlines; stops at the next "-----" so scanning stays linear
            r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.\\]|-(?!----))*+"
            r"-----END [A-Z ]{0,40}PRIVATE KEY-----",
            r"isk-[A-Za-z0-9_\-]{32,}",  # insource virtual keys (service/keys.py KEY_PREFIX)
            r"sk-[A-Za-z0-9_\-]{16,}",  # OpenAI / Anthropic style keys (sk-, sk-proj-, sk-ant-)
            r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe secret and restricted keys
            r"whsec_[A-Za-z0-9+/=]{24,}",  # Stripe webhook signing secrets
            r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
            r"gl(?:pat|ptt|dt|rt)-[A-Za-z0-9_\-]{20,}",  # GitLab tokens
            r"gsk_[A-Za-z0-9]{32,}",  # Groq
            r"xai-[A-Za-z0-9]{32,}",  # xAI
            r"npm_[A-Za-z0-9]{30,}",  # npm
            r"SK[0-9a-fA-F]{32}(?![0-9A-Za-z])",  # Twilio API keys
            r"SG\.[A-Za-z0-9_\-]{16,}+\.[A-Za-z0-9_\-]{16,}+",  # SendGrid
            # AWS key ids, and the secret access key when it follows after a separator
            r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![0-9A-Z])"
            r"(?:(?P<awssep>[\s:,;|=\"'\\]{1,6})(?P<awssecret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=]))?",
            r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
            r"github_pat_[A-Za-z0-9_]{30,}",
            r"xox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack
            r"AIza[0-9A-Za-z_\-]{35}",  # Google API keys
            r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{8,}+\.eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}",  # JWTs
            r"[Bb](?i:earer)\s+[A-Za-z0-9._~+/\-]{16,}=*",  # Authorization: Bearer ...
        )
    )
)
# Cheap substring tests decide whether the known-format pattern needs to run at all: each format holds one
# of them (plain `in` tests cost a third of one regex search; formats with "_" or "-" are only looked for
# when the text has one).
_UNDERSCORE_HINTS = ("k_", "whsec_", "hf_", "npm_", "gh")
_DASH_HINTS = ("sk-", "gl", "xai-", "xox", "-----")
_OTHER_HINTS = ("IA", "ACCA", "AIza", "SK", "SG.", "eyJ")  # AKIA, ASIA, ABIA hold "IA"
_DIGIT_RE = re.compile(r"[0-9]")
_URL_PASSWORD_RE = re.compile(r"://([^\s:/?#@\"'<>\\]{0,128}):([^\s/?#\"'<>\\]{1,256})@")
# prefixes distinctive enough to redact even glued to a word before them ("keyXsk-proj-...")
_UNGLUED = ("-----", "sk-proj-", "sk-ant-", "sk-svcacct-", "sk-admin-")
_HEX32_RE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-f]{32}|[0-9A-F]{32})(?![0-9A-Za-z])")
_HEX32_CONTEXT = ("key", "subscription", "azure", "ocp-apim")
_BASE64_RUN_RE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40,}+")
_LOWER_RUN_RE = re.compile(r"[a-z]{7}")

# Keywords are found with str.find (fast); the separator and value after one are matched in place.
_KEYWORDS = ("key", "token", "secret", "passw", "pwd", "passcode", "credential")
_PASSWORDS = ("passw", "pwd", "passcode")
_KEYWORD_PREFIXES = ("api", "access", "secret", "private", "auth", "client", "account")
# a value: no quote, space or separator; a backslash only when it is not escaping a quote or a newline
_TAIL_RE = re.compile(
    r"""[A-Za-z_\-]{0,12}(?:\\?["']?[ \t]*([:=])[ \t]*\\?["']?|[ \t]+(?:is[ \t]+|was[ \t]+)?\\?["']?)"""
    r"""((?=[^\s"',;]{4})[^\s"',;\\]*+(?:\\(?:\\|[^\s"'\\nrtbfu/])[^\s"',;\\]*+)*+)"""
)


class SecretsRedactor:
    """API keys, bearer tokens, cloud keys, private keys, URL passwords, and values after key/token/password."""

    name = "secrets"
    placeholder = PLACEHOLDER
    min_length = 6  # "pwd=abcd" is the shortest value replaced

    def redact(self, text: str) -> tuple[str, int]:
        count = 0
        low = text.lower()
        if _may_hold_known(text, low):
            text, n = _known(text)
            if n:
                count += n
                low = text.lower()
        if "://" in text:
            text, n = _url_passwords(text)
            if n:
                count += n
                low = text.lower()
        if len(text) >= 32 and ("key" in low or "subscription" in low or "azure" in low):
            text, n = _azure_keys(text, low)
            if n:
                count += n
                low = text.lower()
        if len(text) >= 40 and _DIGIT_RE.search(text) is not None:
            text, n = _aws_secrets(text)
            if n:
                count += n
                low = text.lower()
        spans = _keyword_spans(text, low)
        if not spans:
            return text, count
        return _replace(text, spans), count + len(spans)


def _may_hold_known(text: str, low: str) -> bool:
    if "_" in text and contains_any(text, _UNDERSCORE_HINTS):
        return True
    if "-" in text and contains_any(text, _DASH_HINTS):
        return True
    return contains_any(text, _OTHER_HINTS) or "bearer" in low


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    parts: list[str] = []
    last = 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append(PLACEHOLDER)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _known(text: str) -> tuple[str, int]:
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        if not m.group(0).startswith(_UNGLUED) and preceded_by(m, ALNUM):
            return m.group(0)
        if m.group("awssecret"):
            count += 2
            return f"{PLACEHOLDER}{m.group('awssep')}{PLACEHOLDER}"
        count += 1
        return PLACEHOLDER

    return _KNOWN_RE.sub(sub, text), count


def _url_passwords(text: str) -> tuple[str, int]:
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        if m.group(2) == PLACEHOLDER:
            return m.group(0)
        count += 1
        return f"://{m.group(1)}:{PLACEHOLDER}@"

    return _URL_PASSWORD_RE.sub(sub, text), count


def _azure_keys(text: str, low: str) -> tuple[str, int]:
    spans: list[tuple[int, int]] = []
    for m in _HEX32_RE.finditer(text):
        value = m.group(0)
        if value.isdigit() or value.isalpha():
            continue
        before = low[max(0, m.start() - 48) : m.start()]
        if any(word in before for word in _HEX32_CONTEXT):
            spans.append(m.span())
    return (_replace(text, spans), len(spans)) if spans else (text, 0)


def _aws_secrets(text: str) -> tuple[str, int]:
    spans: list[tuple[int, int]] = []
    for m in _BASE64_RUN_RE.finditer(text):
        start, end = m.span()
        if end - start == 41 and start and text[start - 1] == "\\" and text[start] in "nrt":
            start += 1  # "\nKEY" inside JSON-encoded text: the escape is not part of the key
        if end - start == 40 and _looks_like_aws_secret(text[start:end]):
            spans.append((start, end))
    return (_replace(text, spans), len(spans)) if spans else (text, 0)


def _looks_like_aws_secret(value: str) -> bool:
    if "=" in value or _LOWER_RUN_RE.search(value) is not None:
        return False
    upper = sum(c.isupper() for c in value)
    lower = sum(c.islower() for c in value)
    digits = sum(c.isdigit() for c in value)
    return upper >= 2 and lower >= 2 and digits >= 1 and entropy(value) >= 4.3


def _looks_secret(token: str) -> bool:
    """A random-looking value: letters with digits (or long mixed-case), not a word or snake_case name."""
    if token.startswith("[") and token.endswith("]"):
        return False  # already a placeholder
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    if has_digit and has_alpha:
        return len(token) >= 8 and entropy(token) >= 2.5
    mixed_case = any(c.islower() for c in token) and any(c.isupper() for c in token)
    return mixed_case and len(token) >= 16 and entropy(token) >= 3.5


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
