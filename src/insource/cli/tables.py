"""Tables that fit the terminal, and the --json / --csv forms of every listing.

A table is described by its columns (`Col`) and rows of cells; `print_table` lays it out at the console's width
so that no header word and no number is ever cut: text columns wrap first, then headers are abbreviated, then
the least useful columns are left out (named under the table, with `--json` / `--csv` to see them). Numbers and
identifiers are never wrapped: their column is at least as wide as the longest of them.

`emit` handles what every listing command does before its table: `--json` (one JSON value), `--csv` (a header
row, then the rows' values unformatted) and the one line an empty listing prints instead of an empty table.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from insource.cli.common import console, err_console, literal, print_json, visible

CsvOpt = Annotated[
    bool, typer.Option("--csv", help="Print CSV on stdout: a header row, then one row per item, values unformatted.")
]

Kind = Literal["num", "id", "text"]
Cell = str | Text

TEXT_MIN = 8  # a wrapped text column is never narrower than this (or than its longest header word)
SHORT_CELL = 16  # columns no wider than this are given their whole width first when a table must wrap


@dataclass(frozen=True, slots=True)
class Col:
    """One column. `num` (right-aligned) and `id` cells are never wrapped; `text` cells wrap (folding long words).
    `short` is the header used when the full ones do not fit; columns with a higher `drop` are left out first
    when even abbreviated headers do not fit (0: always shown)."""

    header: str
    kind: Kind = "text"
    short: str | None = None
    drop: int = 0


def _as_text(cell: Cell) -> Text:
    """Plain strings are shown as they are, never read as markup."""
    return Text(cell) if isinstance(cell, str) else cell


def _lines(cell: Cell) -> list[str]:
    return (cell.plain if isinstance(cell, Text) else cell).split("\n")


def _width(text: str) -> int:
    return Text(text).cell_len


def _cell_width(cell: Cell) -> int:
    return max(_width(line) for line in _lines(cell))


def _word_width(header: str) -> int:
    return max((_width(word) for word in header.split()), default=1)


@dataclass(frozen=True, slots=True)
class _Need:
    natural: int  # everything on one line
    minimum: int  # narrowest without cutting a header word, a number or an identifier


def _need(col: Col, cells: list[Cell], header: str, wrap_ids: bool = False) -> _Need:
    longest = max((_cell_width(c) for c in cells), default=0)
    natural = max(_width(header), longest, 1)
    whole = col.kind == "num" or (col.kind == "id" and not wrap_ids)
    floor = longest if whole else min(longest, TEXT_MIN)
    return _Need(natural, max(_word_width(header), floor, 1))


def _overhead(n: int) -> int:
    """Columns of separators and padding a styled table of n columns takes."""
    return 3 * (n - 1) if n else 0  # padding 1 on each inner side, one separator between columns


def _widths(needs: list[_Need], room: int) -> list[int] | None:
    """Each column's width: all natural when they fit, else the minimums plus the spare room shared out, the
    columns that want least served first (so short cells stay whole and long ones wrap); None when even the
    minimums do not fit."""
    if sum(n.natural for n in needs) <= room:
        return [n.natural for n in needs]
    spare = room - sum(n.minimum for n in needs)
    if spare < 0:
        return None
    widths = [n.minimum for n in needs]
    order = sorted(range(len(needs)), key=lambda i: needs[i].natural - needs[i].minimum)
    for i in order:  # short cells (a label, an action) whole first, when the room allows
        want = needs[i].natural - widths[i]
        if needs[i].natural <= SHORT_CELL and want <= spare:
            widths[i] += want
            spare -= want
    for rank, i in enumerate(order):  # then the rest shared out evenly
        give = min(needs[i].natural - widths[i], spare // (len(order) - rank))
        widths[i] += give
        spare -= give
    return widths


@dataclass(frozen=True, slots=True)
class _Layout:
    shown: list[int]  # indexes of the columns shown
    headers: list[str]
    widths: list[int]


def _saving(col: Col, cells: list[Cell], short: str) -> int:
    """How much narrower the short header makes a column (at its minimum and natural widths together)."""
    full, brief = _need(col, cells, col.header), _need(col, cells, short)
    return full.minimum - brief.minimum + full.natural - brief.natural


def _try(
    cols: Sequence[Col], columns: list[list[Cell]], shown: list[int], width: int, wrap_ids: bool
) -> _Layout | None:
    """Full headers, else as few abbreviated ones as needed (those that save most first); None when even all
    abbreviated do not fit `width`."""
    room = width - _overhead(len(shown))
    headers = {i: cols[i].header for i in shown}
    saves = {i: _saving(cols[i], columns[i], short) for i in shown if (short := cols[i].short)}
    shorter = sorted((i for i, saved in saves.items() if saved > 0), key=lambda i: -saves[i])
    for step in range(len(shorter) + 1):
        if step:
            headers[shorter[step - 1]] = cols[shorter[step - 1]].short or ""
        needs = [_need(cols[i], columns[i], headers[i], wrap_ids) for i in shown]
        widths = _widths(needs, room)
        if widths is not None:
            return _Layout(shown, [headers[i] for i in shown], widths)
    return None


def _layout(cols: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int) -> _Layout:
    """Wrap text, then abbreviate headers, then leave out columns (highest `drop` first); as a last resort, wrap
    identifiers too (numbers never)."""
    columns = [[row[i] for row in rows] for i in range(len(cols))]
    shown = list(range(len(cols)))
    droppable = sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: (-cols[i].drop, -i))
    while (plan := _try(cols, columns, shown, width, wrap_ids=False)) is None and droppable:
        shown.remove(droppable.pop(0))
    if plan is None:
        plan = _try(cols, columns, shown, width, wrap_ids=True)
    if plan is None:  # too narrow for anything: the narrowest layout, which the terminal will have to wrap
        headers = [cols[i].short or cols[i].header for i in shown]
        needs = [_need(cols[i], columns[i], h, True) for i, h in zip(shown, headers, strict=True)]
        plan = _Layout(shown, headers, [n.minimum for n in needs])
    return plan


def fit_table(
    cols: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    *,
    width: int,
    title: str | Text | None = None,
    caption: str | Text | None = None,
) -> Table:
    """The table laid out to be at most `width` columns wide (see the module's docstring)."""
    plan = _layout(cols, rows, width)
    hidden = [cols[i].header for i in range(len(cols)) if i not in plan.shown]
    if hidden:
        note = f"hidden at this width: {', '.join(hidden)} (--json or --csv show every column)"
        caption = note if caption is None else Text.assemble(caption, "\n", note)
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
    )
    for i, header, w in zip(plan.shown, plan.headers, plan.widths, strict=True):
        col = cols[i]
        table.add_column(header, justify="right" if col.kind == "num" else "left", overflow="fold", width=w)
    for row in rows:
        table.add_row(*(_as_text(row[i]) for i in plan.shown))
    return table


def print_table(
    cols: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | Text | None = None,
    caption: str | Text | None = None,
    out: Console | None = None,
) -> None:
    target = out or console
    target.print(fit_table(cols, rows, width=target.width, title=title, caption=caption))


_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # OWASP: cells starting so run as formulas in spreadsheets


def csv_value(value: Any) -> str:
    """A JSON value as one CSV field: unformatted numbers, true/false, empty for null, JSON for lists and objects;
    control characters in text shown as escapes (tabs and newlines kept: CSV quotes them), as in tables; text
    starting with = + - @ (a task name comes from traffic) gets a leading apostrophe, so it is never a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):  # text a spreadsheet would run as a formula gets an apostrophe (CSV injection)
        return ("'" if value[:1] in _FORMULA else "") + visible(value, multiline=True)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def print_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """A header row (`columns`, else every key in order of first appearance), then one line per row."""
    fields: dict[str, None] = dict.fromkeys(columns)
    for row in [] if columns else rows:
        fields.update(dict.fromkeys(row))
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(csv_value(row.get(f)) for f in fields)
    sys.stdout.flush()


def emit(rows: Sequence[dict[str, Any]], *, json: bool, csv: bool = False, empty: str) -> bool:
    """Print `rows` as JSON or CSV, or `empty` (one line: what is empty and what to run next) when there are
    none; True when that was all, False when the caller prints its table."""
    if json and csv:
        raise typer.BadParameter("choose one of --json and --csv")
    if json:
        print_json(list(rows))
        return True
    if csv:
        if rows:
            print_csv(rows)
        else:
            err_console.print(literal(empty), soft_wrap=True)
        return True
    if not rows:
        console.print(literal(empty), soft_wrap=True)
        return True
    return False
