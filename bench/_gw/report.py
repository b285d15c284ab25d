"""Reporting: the table rows, the machine facts and the Markdown written to bench/results/gateway.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CPU_TARGET_MS, REPO, STREAM_DELTA_TARGET_MS

if TYPE_CHECKING:
    from .measure import Row

HEADER = (
    "| target | mode | conc | requests | req/s | p50 ms | p99 ms | TTFT p50 | TTFT p99 "
    "| gw CPU ms/req | gw main-thread ms/req | others' load (cores) |"
)
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
ABL_HEADER = "| variant " + HEADER
ABL_RULE = "|---" + RULE


def _f(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def fmt_row(r: Row) -> str:
    return (
        f"| {r.target} | {r.mode} | {r.conc} | {r.requests} | {r.rps:,.0f} | {_f(r.p50_ms)} | {_f(r.p99_ms)} "
        f"| {_f(r.ttft_p50_ms)} | {_f(r.ttft_p99_ms)} | {_f(r.cpu_ms, 3)} | {_f(r.main_cpu_ms, 3)} "
        f"| {_f(r.others, 2)} |"
    )


def fmt_pairs(mode: str, e: dict[str, Any]) -> str:
    """The console line for the concurrency-1 alternating pairs of one mode."""
    return (
        f"c=1 {mode}: direct p50 {e['direct_p50_ms']:.3f} ms, gateway p50 {e['gateway_p50_ms']:.3f}"
        f" ms, added p50 {e['delta_p50_ms']:.3f} ms (p90 {e['delta_p90_ms']:.3f});"
        f" TTFT {e['direct_ttft_p50_ms']:.3f} → {e['gateway_ttft_p50_ms']:.3f} ms"
    )


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False).stdout.decode().strip()


def machine_facts(workers: int) -> dict[str, str]:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    versions = []
    for name in ("uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "orjson"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, check=False).stdout.decode().split("[")[0].strip()
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "src")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{model}, {os.cpu_count()} cores",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "stack": ", ".join(versions),
        "load": wrk_v or "wrk",
        "gateway": f"insource {commit}{' (src modified)' if dirty else ''}, {workers} worker(s)",
    }


def _intro(facts: dict[str, str], args: argparse.Namespace) -> list[str]:
    return [
        "# Gateway overhead: insource vs. direct to the upstream",
        "",
        f"Measured {facts['date']} by `python bench/gateway_bench.py{' --quick' if args.quick else ''}`.",
        "",
        f"- Machine: {facts['cpu']}, {facts['os']}, Python {facts['python']}; loopback only.",
        f"- Stack: {facts['stack']}; load: {facts['load']} (1 thread) and a uvloop raw-socket probe.",
        f"- Gateway: {facts['gateway']}, pinned to CPU 0; upstream and load generators pinned to CPU 1."
        if not args.no_pin
        else f"- Gateway: {facts['gateway']} (not pinned).",
        "- Key with a budget (USD 1000) and an RPM limit; capture on (default redactors); SQLite store.",
        f"- Upstream: `bench/_upstream.py` (raw ASGI, pre-serialised bodies; streams: role + {args.chunks} content "
        "+ finish (+ usage) chunks + `[DONE]`, one write each).",
        f"- Each row: up to {args.requests} requests or {args.seconds:g} s (wrk). TTFT columns: probe client, up to "
        f"{args.probe_n}–{args.probe_n * 2} streams. gw CPU: user+system of the gateway process (all threads, "
        "incl. the background writer that redacts and stores captures) / requests; main-thread: the event loop only.",
    ]


def _pairs_table(extra: dict[str, Any]) -> list[str]:
    lines = [
        "Concurrency 1, direct and gateway requests alternating on kept-alive connections "
        f"({extra['json']['pairs']} pairs each):",
        "",
        "| mode | direct p50 ms | gateway p50 ms | added p50 ms | added p90 ms | direct TTFT p50 | gateway TTFT p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("json", "stream"):
        e = extra[mode]
        lines.append(
            f"| {mode} | {e['direct_p50_ms']:.3f} | {e['gateway_p50_ms']:.3f} | {e['delta_p50_ms']:.3f} "
            f"| {e['delta_p90_ms']:.3f} | {e['direct_ttft_p50_ms']:.3f} | {e['gateway_ttft_p50_ms']:.3f} |"
        )
    return lines


def _targets(rows: list[Row], extra: dict[str, Any]) -> list[str]:
    json_cpu = [r.cpu_ms for r in rows if r.target == "gateway" and r.mode == "json" and r.cpu_ms is not None]
    best = min(json_cpu) if json_cpu else float("nan")
    delta = extra["stream"]["delta_p50_ms"]
    return [
        "",
        "Targets:",
        "",
        f"- gateway CPU per non-streaming request ≤ {CPU_TARGET_MS} ms: measured {best:.3f}–{max(json_cpu):.3f} ms "
        f"→ {'met' if max(json_cpu) <= CPU_TARGET_MS else 'NOT met'}.",
        f"- whole-stream latency added at concurrency 1 ≤ {STREAM_DELTA_TARGET_MS} ms: measured {delta:.3f} ms "
        f"→ {'met' if delta <= STREAM_DELTA_TARGET_MS else 'NOT met'}.",
    ]


def _sections(
    args: argparse.Namespace, profile: str | None, ablated: list[tuple[str, Row]], compared: str | None
) -> list[str]:
    lines: list[str] = []
    if ablated:
        lines += [
            "",
            "## Ablation: what each feature costs (concurrency 16, config switches only)",
            "",
            ABL_HEADER,
            ABL_RULE,
            *[f"| {name} | {fmt_row(r)[2:]}" for name, r in ablated],
        ]
    if compared:
        lines += ["", "## A/B: this gateway vs. a patched copy of src/ (`--compare`)", ""]
        lines += [args.compare_note, ""] if args.compare_note else []
        lines += [compared]
    if profile:
        lines += ["", "## Profile of the gateway under load (py-spy)", "", "```", profile.rstrip(), "```"]
    return lines


def render(
    rows: list[Row],
    extra: dict[str, Any],
    facts: dict[str, str],
    args: argparse.Namespace,
    profile: str | None,
    ablated: list[tuple[str, Row]],
    compared: str | None = None,
) -> str:
    lines = [
        *_intro(facts, args),
        "",
        HEADER,
        RULE,
        *[fmt_row(r) for r in rows],
        "",
        *_pairs_table(extra),
        *_targets(rows, extra),
        *_sections(args, profile, ablated, compared),
    ]
    return "\n".join(lines) + "\n"
