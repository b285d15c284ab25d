"""Charts for `insource eval`: reliability diagram and coverage–agreement curve.

HTML (plotly, offline: the JS is embedded) always works; PNG needs plotly's image export (`kaleido`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from insource.errors import NotReady


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


def write_chart(result: dict[str, Any], path: Path) -> Path:
    """Write the chart to `path` (.html or .png), atomically."""
    suffix = path.suffix.lower()
    if suffix not in (".html", ".png"):
        raise NotReady(f"--chart must end in .html or .png, got {path.name!r}")
    try:
        fig = _figure(result)
    except ImportError:
        raise NotReady("charts need plotly: pip install plotly") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".html":
            fig.write_html(tmp, include_plotlyjs=True, full_html=True)
        else:
            try:
                fig.write_image(tmp)
            except (ImportError, ValueError, RuntimeError) as exc:
                raise NotReady(
                    f"PNG export needs plotly's image engine (pip install kaleido): {exc}; "
                    "use --chart FILE.html instead"
                ) from None
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
