"""Stored or user-supplied text made safe to print: control characters and bidi overrides shown as escapes,
never read as Rich markup. Used by the CLI and the demo alike."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text

__all__ = ["literal", "shown", "visible"]

# C0 controls, DEL, C1 controls, bidirectional overrides/isolates and line/paragraph separators: shown as
# escapes (\x1b, \u202e), never passed to the terminal.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)
_CONTROLS = (*range(0x00, 0x20), *range(0x7F, 0xA0), *_BIDI)
_VISIBLE = {cp: (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}") for cp in _CONTROLS}
_VISIBLE.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
_MULTILINE = {cp: esc for cp, esc in _VISIBLE.items() if cp not in (0x09, 0x0A)}  # tabs, newlines kept


def visible(value: object, *, multiline: bool = False) -> str:
    """`value` as text with every control character shown as an escape (tabs/newlines kept if multiline)."""
    return str(value).translate(_MULTILINE if multiline else _VISIBLE)


def literal(value: object, *, multiline: bool = False, style: str = "") -> Text:
    """Stored or user-supplied text to print or put in a table: shown exactly, never read as markup."""
    return Text(visible("" if value is None else value, multiline=multiline), style=style)


def shown(value: object) -> str:
    """The same, for use inside a markup string (f"[bold]{shown(task)}[/]")."""
    return escape(visible("" if value is None else value))
