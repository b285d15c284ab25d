"""The Markdown of the soak (bench/results/gateway_soak.md): scenario rows, RSS over time, the targets."""

from __future__ import annotations

import argparse
from typing import Any

from .common import HERE
from .soak import HEADER, RULE, SOAK_HEADER, SOAK_RULE, Sample, fmt, fmt_window

SOAK_RESULTS = HERE / "results" / "gateway_soak.md"


def render_soak(rows: list[Sample], soaks: dict[str, list[Sample]], facts: dict[str, str], args: Any) -> str:
    lines = ["# Gateway under a slow upstream: tail latency, memory over a soak, CPU per request", ""]
    lines.append("## Targets")
    lines += targets(rows, soaks, args)
    lines += ["", HEADER, RULE, *(fmt(r) for r in rows)]
    for name, samples in soaks.items():
        lines += ["", f"Soak of {name}:", "", SOAK_HEADER, SOAK_RULE, *(fmt_window(s) for s in samples)]
    return "\n".join(lines) + "\n"


def targets(rows: list[Sample], soaks: dict[str, list[Sample]], args: argparse.Namespace) -> list[str]:
    return []
