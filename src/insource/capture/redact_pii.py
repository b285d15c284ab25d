"""Personal-data redactors: e-mail addresses, card numbers (Luhn), IBANs (mod 97), phone numbers.

Rules that trade recall against false positives, as documented for users:

- cards: 13-19 digits, compact or grouped by spaces or dashes, or in dotted groups of 4-6 digits
  (`4111.1111.1111.1111`); always Luhn-checked, never all one digit.
- IBANs: any letter case, compact or in groups of four separated by spaces or dashes; the country code must
  be an IBAN country, the length must be that country's IBAN length, and the mod-97 check must pass.
- phones: international numbers (`+CC ...` or `00CC ...`), separated national formats (`(555) 123-4567`,
  `415 555 2671`, `020 7946 0958`, `06 12 34 56 78`), 9-15 digits. Ten unseparated digits (`4155552671`,
  `0612345678`) are a phone number only when they look like one (a North American number whose area code
  and exchange start with 2-9, or a national number starting 0 then 1-9) and a phone word (call, phone,
  tel, mobile, cell, text, sms, whatsapp, fax, contact, reach, dial) appears in the 40 characters before:
  order numbers, references and timestamps stay.
"""

from __future__ import annotations

import re

from insource.capture.redact_base import ALNUM, DIGITS, RegexRedactor, glued, preceded_by

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
    """13-19 digit numbers (spaces, dashes or dotted groups allowed) that pass the Luhn check."""

    def __init__(self) -> None:
        super().__init__(
            "card",
            # one leading digit for both forms keeps the engine's fast scan for a first character
            re.compile(r"[0-9](?:(?:[ \-]?[0-9]){12,18}(?![0-9])|[0-9]{3}(?:\.[0-9]{4,6}){2,3}(?![0-9]|\.[0-9]))"),
            "[CARD]",
        )

    def check(self, m: re.Match[str]) -> bool:
        if preceded_by(m, DIGITS + ".,"):
            return False
        digits = m.group(0).replace(" ", "").replace("-", "").replace(".", "")
        return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


# -- IBAN (mod 97) ---------------------------------------------------------------------------
# ISO 13616 registry: country code -> IBAN length
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").replace("-", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit() or not s.isalnum() or not s.isascii():
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


class IbanRedactor(RegexRedactor):
    """IBANs (any case), compact or in groups of four, that have their country's length and pass mod 97.

    The pattern starts at the two check digits (a fast scan for a digit) and looks back for the country code.
    """

    def __init__(self) -> None:
        super().__init__(
            "iban",
            re.compile(
                r"[0-9]{2}(?<=[A-Za-z]{2}[0-9]{2})"
                r"(?:[A-Za-z0-9]{11,30}|(?:[ \-][A-Za-z0-9]{4}){2,7}(?:[ \-][A-Za-z0-9]{1,3})?)(?![A-Za-z0-9])"
            ),
            "[IBAN]",
        )

    def redact(self, text: str) -> tuple[str, int]:
        spans: list[tuple[int, int]] = []
        for m in self.pattern.finditer(text):
            start = m.start() - 2
            if not glued(text, start, ALNUM) and iban_ok(text[start : m.end()]):
                spans.append((start, m.end()))
        if not spans:
            return text, 0
        parts: list[str] = []
        last = 0
        for start, end in spans:
            parts += (text[last:start], self.placeholder)
            last = end
        parts.append(text[last:])
        return "".join(parts), len(spans)


# -- phone numbers ---------------------------------------------------------------------------
_PHONE_EXACT = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+|00(?=[1-9]))\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}"  # (555) 123-4567
    r"|0[1-9](?:[ .\-]\d{2}){4}"  # 06 12 34 56 78
    r"|0\d{2,4}[ .\-]\d{3,4}[ .\-]?\d{3,4}"  # 020 7946 0958
    r"|\d{3}[ .\-]\d{3}[ .\-]\d{4}"  # 555-123-4567, 415 555 2671
    r")(?!\w)"
)
_BARE_PHONE = re.compile(r"(?<![0-9])(?:[2-9][0-9]{2}[2-9][0-9]{6}|0[1-9][0-9]{8})(?![0-9])")
_PHONE_WORDS = (
    "call", "phone", "tel", "mobile", "cell", "text", "sms", "whatsapp", "fax", "contact", "reach", "dial",
)  # fmt: skip


class PhoneRedactor(RegexRedactor):
    """International (+CC or 00CC ...) numbers, separated national formats (9-15 digits), and ten bare
    digits shaped like a phone number right after a phone word (see the module docstring).

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
            nonlocal count
            if preceded_by(m, ALNUM + "+"):
                return m.group(0)
            origin = m.start()

            def bare(b: re.Match[str]) -> str:
                nonlocal count
                if not _after_phone_word(m.string, origin + b.start()):
                    return b.group(0)
                count += 1
                return self.placeholder

            found = _BARE_PHONE.sub(bare, m.group(0)) if len(m.group(0)) >= 10 else m.group(0)
            return _PHONE_EXACT.sub(exact, found)

        out = self.pattern.sub(candidate, text)
        return out, count


def _after_phone_word(text: str, start: int) -> bool:
    before = text[max(0, start - 40) : start].lower()
    return any(word in before for word in _PHONE_WORDS)
