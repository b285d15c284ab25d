"""Pages to HTML with Jinja2 (autoescaped), charts as plotly.js figures. Imported only when the dashboard is
used: never on the gateway's path."""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from insource.service.dashboard_types import Chart, Page, Panel, Series

NAV = [
    ("overview", "Overview", "/ui"),
    ("tasks", "Tasks", "/ui/tasks"),
    ("routes", "Students and routes", "/ui/routes"),
]
NAV += [("tenants", "Tenants and keys", "/ui/tenants"), ("provider", "Provider", "/ui/provider")]
INSTALL_HINT = 'Charts need the plotly package: pip install "insource[ui]". The tables below hold the same figures.'
COLORS = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#64748b"]


def fmt(value: Any, kind: str) -> str:
    """A cell or figure as shown on a page (the CSV and JSON keep the raw value)."""
    if value is None or value == "":
        return "–"
    if kind == "usd" and isinstance(value, int | float):
        return f"${value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"${value:.6f}".rstrip("0")
    if kind == "share" and isinstance(value, int | float):
        return f"{value:.1%}"
    if kind == "int" and isinstance(value, int | float):
        return f"{int(value):,}"
    if kind == "number" and isinstance(value, float):
        return f"{value:,.3f}"
    return str(value)


def _trace(kind: str, s: Series, **style: Any) -> dict[str, Any]:
    if kind == "bar":
        return {"type": "bar", "name": s.name, "x": s.x, "y": s.y, **style}
    return {"type": "scatter", "mode": kind, "name": s.name, "x": s.x, "y": s.y, **style}


def figure(chart: Chart) -> dict[str, Any]:
    """A plotly.js figure (data + layout) for a chart; a band is drawn as a shaded interval under its series."""
    data: list[dict[str, Any]] = []
    if chart.band is not None:
        lower, upper = chart.band
        data.append(_trace("lines", lower, line={"width": 0}, showlegend=False, hoverinfo="x+y"))
        data.append(_trace("lines", upper, line={"width": 0}, fill="tonexty", fillcolor="rgba(37,99,235,0.15)"))
    for i, s in enumerate(chart.series):
        color = COLORS[i % len(COLORS)]
        if chart.kind in ("line", "band"):
            data.append(_trace("lines+markers", s, line={"color": color}))
        else:
            data.append(_trace("bar", s, marker={"color": color}))
    yaxis: dict[str, Any] = {"title": {"text": chart.y_title}, "rangemode": "tozero"}
    if chart.percent:
        yaxis["tickformat"] = ".0%"
    layout = {
        "barmode": "stack" if chart.kind == "stacked" else "group",
        "margin": {"l": 60, "r": 20, "t": 10, "b": 60},
        "height": 320,
        "yaxis": yaxis,
        "legend": {"orientation": "h"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
    }
    return {"data": data, "layout": layout}


def json_for_script(value: Any) -> Markup:
    """JSON safe inside a <script type="application/json"> element (no `</script>` can close it)."""
    text = orjson.dumps(value).decode()
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("insource.server.ui", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["script_json"] = json_for_script
    env.globals["figure"] = figure
    env.globals["nav"] = NAV
    return env


def static_text(name: str) -> str:
    return importlib.resources.files("insource.server.ui").joinpath("static", name).read_text("utf-8")


@functools.cache
def plotly_js() -> tuple[str, str] | None:
    """(version, plotly.min.js) from the installed plotly package, or None when it is not installed."""
    try:
        import plotly
        from plotly.offline import get_plotlyjs
    except ImportError:
        return None
    return str(plotly.__version__), get_plotlyjs()


def render(template: str, **context: Any) -> str:
    plotly = plotly_js()
    context.setdefault("plotly_src", f"/ui/static/plotly-{plotly[0]}.min.js" if plotly else None)
    context.setdefault("install_hint", None if plotly else INSTALL_HINT)
    return environment().get_template(template).render(**context)


def render_page(page: Page, csrf: str, **context: Any) -> str:
    return render("page.html", page=page, csrf=csrf, csv_base=_csv_base(page), **context)


def _csv_base(page: Page) -> str:
    if page.id.startswith("task:"):
        from urllib.parse import quote

        return "/ui/tasks/" + quote(page.id[5:], safe="") + "/csv/"
    return f"/ui/{page.id}/csv/" if page.id != "overview" else "/ui/overview/csv/"


def render_report(page: Page) -> str:
    """The page as one self-contained HTML file: plotly.js, styles and script inlined; no request to anywhere."""
    plotly = plotly_js()
    return render(
        "report.html",
        page=page,
        plotly_inline=Markup(plotly[1].replace("</script", "<\\/script")) if plotly else None,
        style=Markup(static_text("ui.css")),
        script=Markup(static_text("ui.js")),
    )


def panel_points(panel: Panel) -> int:
    return panel.chart.points() if panel.chart else 0
