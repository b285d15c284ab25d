"""What a dashboard page is made of: key figures and panels. A panel is a table, optionally drawn as a chart
from the same rows, so every chart has its table and its CSV. Plain data: the server renders it with Jinja2,
`insource report` writes it as one HTML file or as JSON."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Format = Literal["text", "usd", "int", "share", "number", "date", "time"]


@dataclass
class Column:
    name: str
    format: Format = "text"


@dataclass
class Series:
    name: str
    x: list[Any]
    y: list[Any]


@dataclass
class Chart:
    kind: Literal["stacked", "line", "bar", "band"]
    series: list[Series]
    y_title: str = ""
    band: tuple[Series, Series] | None = None  # (lower, upper) drawn as a shaded interval
    percent: bool = False  # y values are shares (0..1)

    def points(self) -> int:
        return sum(len(s.y) for s in self.series)


@dataclass
class Action:
    """A button on a table row: a POST to `path` (with the session's CSRF token)."""

    label: str
    path: str
    confirm: str = ""


@dataclass
class Panel:
    id: str
    title: str
    columns: list[Column]
    rows: list[list[Any]]
    empty: str  # what to do first when there is nothing to show
    chart: Chart | None = None
    note: str = ""
    actions: list[Action | None] = field(default_factory=list)  # one per row, when the table has buttons

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.name for c in self.columns])
        for row in self.rows:
            writer.writerow(["" if v is None else _csv_safe(v) for v in row])
        return out.getvalue()


def _csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would read as a formula is quoted with a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@dataclass
class Figure:
    label: str
    value: Any
    format: Format = "text"
    note: str = ""


@dataclass
class Page:
    id: str
    title: str
    figures: list[Figure]
    panels: list[Panel]
    empty: str | None = None  # the whole page's empty state: what to do first
    as_of: str = ""

    def panel(self, panel_id: str) -> Panel | None:
        return next((p for p in self.panels if p.id == panel_id), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
