"""The Markdown of the soak (bench/results/gateway_soak.md): targets, scenario rows, RSS over time."""

from __future__ import annotations

import argparse
import statistics

from .common import HERE
from .soak import HEADER, RULE, SOAK_HEADER, SOAK_RULE, Sample, fmt, fmt_window

SOAK_RESULTS = HERE / "results" / "gateway_soak.md"
RSS_LIMIT_MB = 150.0
RSS_GROWTH_MB = 20.0
P99_RATIO = 1.5
CPU_RATIO = 1.1


def _find(rows: list[Sample], target: str, phase: str, conc: int) -> Sample | None:
    return next((r for r in rows if r.target == target and r.phase == phase and r.conc == conc), None)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def latency_targets(rows: list[Sample], args: argparse.Namespace) -> list[str]:
    out = []
    for phase in ("fresh", "after soak"):
        for conc in args.load_concurrency:
            ins, tz = _find(rows, "insource", phase, conc), _find(rows, "tensorzero", phase, conc)
            if ins is None or tz is None:
                continue
            ratio = ins.p99_ms / tz.p99_ms
            out.append(
                f"- {phase}, concurrency {conc}: p99 {ins.p99_ms:.1f} ms vs TensorZero {tz.p99_ms:.1f} "
                f"({ratio:.2f}×, target ≤ {P99_RATIO}×: {_verdict(ratio <= P99_RATIO)}); throughput "
                f"{ins.rps:,.0f} vs {tz.rps:,.0f} req/s (target ≥: {_verdict(ins.rps >= tz.rps)}); "
                f"others' load {ins.others:.2f} / {tz.others:.2f} cores"
            )
    return out


def cpu_targets(rows: list[Sample], args: argparse.Namespace) -> list[str]:
    out = []
    for phase in ("fresh (CPU)", "after soak (CPU)"):
        for conc in args.cpu_concurrency:
            ins, tz = _find(rows, "insource", phase, conc), _find(rows, "tensorzero", phase, conc)
            if ins is None or tz is None or ins.cpu_ms is None or tz.cpu_ms is None:
                continue
            ratio = ins.cpu_ms / tz.cpu_ms
            out.append(
                f"- {phase.split(' (')[0]}, concurrency {conc}: gateway CPU {ins.cpu_ms:.3f} vs TensorZero "
                f"{tz.cpu_ms:.3f} ms/request ({ratio:.2f}×, target ≤ {CPU_RATIO}×: {_verdict(ratio <= CPU_RATIO)})"
            )
    return out


def memory_targets(soaks: dict[str, list[Sample]]) -> list[str]:
    out = []
    for name, samples in soaks.items():
        windows = [s for s in samples if s.done]
        if not windows:
            continue
        last = windows[-1]
        half = min(windows, key=lambda s: abs(s.done - last.done / 2))
        growth = (last.rss_mb or 0) - (half.rss_mb or 0)
        line = (
            f"- {name}: RSS {samples[0].rss_mb:.0f} MB at the start, {last.rss_mb:.0f} MB after {last.done:,} "
            f"requests; {growth:+.1f} MB over the second half (from {half.done:,})"
        )
        if name == "insource":
            line += (
                f" — targets ≤ {RSS_LIMIT_MB:.0f} MB: {_verdict((last.rss_mb or 0) <= RSS_LIMIT_MB)}, "
                f"growth ≤ {RSS_GROWTH_MB:.0f} MB: {_verdict(growth <= RSS_GROWTH_MB)}"
            )
        p99s = [s.p99_ms for s in windows]
        line += f"; window p99 first {p99s[0]:.1f} ms, median {statistics.median(p99s):.1f}, last {p99s[-1]:.1f}"
        out.append(line)
    return out


def render_soak(
    rows: list[Sample], soaks: dict[str, list[Sample]], facts: dict[str, str], args: argparse.Namespace
) -> str:
    others = [r.others for r in rows] + [s.others for v in soaks.values() for s in v if s.done]
    lines = [
        "# Gateway under a slow upstream: tail latency, memory over a soak, CPU per request",
        "",
        f"Measured {facts['date']} by `python bench/gateway_bench.py --soak --soak-requests {args.soak_requests}"
        f"{' --tensorzero-python ' + str(args.tensorzero_python) if args.tensorzero_python else ''}"
        f"{f' --tensorzero-soak-requests {args.tensorzero_soak_requests}' if args.tensorzero_soak_requests else ''}`.",
        "",
        f"- Machine: {facts['cpu']}, {facts['os']}, Python {facts['python']}; loopback only. **Shared**: the other "
        f"engineers' processes used {min(others):.2f}–{max(others):.2f} of the 2 cores during the runs (median "
        f"{statistics.median(others):.2f}; column *others' load*), so absolute figures are lower than on a quiet "
        "machine; insource and TensorZero alternate run by run and see the same load.",
        f"- Stack: {facts['stack']}; load: {facts['load']} (1 thread, pinned to CPU 1 with the upstream).",
        f"- Gateway: {facts['gateway']}, pinned to CPU 0, at `--log-level {args.log_level}`; its key has a budget and "
        f"an RPM limit; {'capture off' if args.no_capture else 'capture on (default redactors)'}; journal on; SQLite "
        "store.",
        "- TensorZero: `tensorzero==2026.6.0` (its Rust gateway, from the wheel, in its own venv; "
        "`bench/_gw/tz_gateway.py`), observability off, pinned to CPU 0 too (only one gateway is loaded at a time).",
        f"- Upstream: `bench/_upstream.py --latency-ms {args.latency_ms:g}` (non-streaming chat completions). Each "
        f"scenario row: {args.seconds:g} s of wrk (CPU rows {args.cpu_seconds:g} s); RSS: resident set of the gateway "
        f"process; soak: {args.soak_requests:,} requests (insource) at concurrency {args.soak_concurrency}, one line "
        f"per ~{args.soak_window:,} requests.",
        "",
        "## Targets",
        "",
        *latency_targets(rows, args),
        *cpu_targets(rows, args),
        *memory_targets(soaks),
        "",
        "## Scenario rows (fresh, then after the soak)",
        "",
        HEADER,
        RULE,
        *(fmt(r) for r in rows),
    ]
    for name, samples in soaks.items():
        lines += ["", f"## Soak: {name}", "", SOAK_HEADER, SOAK_RULE, *(fmt_window(s) for s in samples)]
    return "\n".join(lines) + "\n"
