"""Charts for `insource eval`: reliability diagram and coverage–agreement curve.

HTML is interactive plotly with its JS embedded (works offline); PNG is drawn by matplotlib (no browser needed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from insource.errors import NotReady
from insource.registry.entries import publish_mode


def _figure(result: dict[str, Any]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"Coverage–agreement ({result['split']}, n={result['n']})",
            f"Reliability (ECE {result['ece']:.3f})",
        ),
    )
    curve = [p for p in result["curve"] if p["agreement"] is not None]
    fig.add_trace(
        go.Scatter(
            x=[p["coverage"] for p in curve],
            y=[p["agreement"] for p in curve],
            mode="lines+markers",
            name="student",
            text=[f"t={p['threshold']}" for p in curve],
        ),
        row=1,
        col=1,
    )
    if result.get("threshold") is not None:
        fig.add_trace(
            go.Scatter(
                x=[result["coverage_at_threshold"]],
                y=[result["agreement_at_threshold"]],
                mode="markers",
                marker={"size": 12, "symbol": "star"},
                name=f"threshold {result['threshold']:.3f} (chosen on val)",
            ),
            row=1,
            col=1,
        )
    fig.add_hline(y=result["target_agreement"], line_dash="dash", row=1, col=1)
    bins = [b for b in result["reliability"] if b["n"]]
    fig.add_trace(
        go.Bar(
            x=[(b["lo"] + b["hi"]) / 2 for b in bins],
            y=[b["accuracy"] for b in bins],
            width=[b["hi"] - b["lo"] for b in bins],
            name="agreement per bin",
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"dash": "dot"}), row=1, col=2
    )
    fig.update_xaxes(title_text="coverage (share answered by the student)", row=1, col=1)
    fig.update_yaxes(title_text="agreement with the teacher", row=1, col=1)
    fig.update_xaxes(title_text="confidence", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="agreement", range=[0, 1], row=1, col=2)
    fig.update_layout(title=f"{result['model']} vs teacher", width=1200, height=520)
    return fig


def _png_figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; never a GUI backend in a CLI or a server
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.2), dpi=100)
    left, right = fig.subplots(1, 2)
    curve = [p for p in result["curve"] if p["agreement"] is not None]
    left.plot([p["coverage"] for p in curve], [p["agreement"] for p in curve], marker="o", ms=3, label="student")
    if result.get("threshold") is not None:
        left.plot(
            [result["coverage_at_threshold"]],
            [result["agreement_at_threshold"]],
            marker="*",
            ms=14,
            ls="",
            label=f"threshold {result['threshold']:.3f} (chosen on val)",
        )
    left.axhline(result["target_agreement"], ls="--", color="grey", label=f"target {result['target_agreement']:g}")
    left.set(title=f"Coverage–agreement ({result['split']}, n={result['n']})", xlabel="coverage", ylabel="agreement")
    left.legend(loc="lower left")
    bins = [b for b in result["reliability"] if b["n"]]
    right.bar(
        [(b["lo"] + b["hi"]) / 2 for b in bins],
        [b["accuracy"] for b in bins],
        width=[b["hi"] - b["lo"] for b in bins],
        label="agreement per bin",
    )
    right.plot([0, 1], [0, 1], ls=":", color="black", label="perfect calibration")
    right.set(title=f"Reliability (ECE {result['ece']:.3f})", xlabel="confidence", ylabel="agreement")
    right.set(xlim=(0, 1), ylim=(0, 1))
    right.legend(loc="upper left")
    fig.suptitle(f"{result['model']} vs teacher")
    return fig


def _write(result: dict[str, Any], suffix: str, tmp: str) -> None:
    if suffix == ".html":
        try:
            fig = _figure(result)
        except ImportError:
            raise NotReady("HTML charts need plotly: pip install 'insource[student]'") from None
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
        return
    try:
        png = _png_figure(result)
    except ImportError:
        raise NotReady("PNG charts need matplotlib: pip install 'insource[student]'") from None
    png.savefig(tmp, format="png")


def check_chart_path(path: Path) -> str:
    """The chart's format (".html" or ".png") from its name; call before any work is done or saved."""
    suffix = path.suffix.lower()
    if suffix not in (".html", ".png"):
        raise NotReady(f"--chart must end in .html or .png, got {path.name!r}")
    if path.is_dir():
        raise NotReady(f"--chart {path} is a folder: give a file name ending in .html or .png")
    return suffix


def write_chart(result: dict[str, Any], path: Path) -> Path:
    """Write the chart to `path` (.html: interactive plotly; .png: matplotlib), atomically, mode 0666 & ~umask."""
    suffix = check_chart_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        _write(result, suffix, tmp)
        publish_mode(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
