"""The runs: direct vs. gateway load rows, the concurrency-1 pairs, the A/B comparison and the ablation."""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from typing import Any

import psutil

from .common import chat_body
from .load import run_probe, run_wrk
from .procs import Env, cpu_times, start_env, writer_idle
from .report import fmt_row


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))  # nearest rank
    return s[k]


@dataclass
class Row:
    target: str
    mode: str
    conc: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    cpu_ms: float | None = None
    main_cpu_ms: float | None = None
    others: float | None = None  # CPU cores used by processes that are not part of the benchmark


class OtherLoad:
    """CPU used by everything else on the machine during a run (other users' jobs skew the figures)."""

    def __init__(self, env: Env) -> None:
        self.pids = [p.pid for _, p in env.procs]
        self.start()

    def _ours(self) -> float:
        import resource

        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    t = proc.cpu_times()
                    total += t.user + t.system
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, probes: waited for
        return total + me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq

    def start(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), self._busy(), self._ours()

    def cores(self) -> float:
        elapsed = time.monotonic() - self.t0
        return max(0.0, (self._busy() - self.busy0) - (self._ours() - self.ours0)) / max(elapsed, 1e-9)


def gateway_run(env: Env, key: str, body: bytes, conc: int, args: argparse.Namespace) -> tuple[dict[str, Any], Row]:
    """One wrk run against the gateway with its CPU time read before and after (writer drained)."""
    writer_idle(env)
    others = OtherLoad(env)
    before = cpu_times(env.gateway_pid)
    res = run_wrk(env.gateway_port, key, body, conc, args.requests, args.seconds, env.workdir, not args.no_pin)
    writer_idle(env)
    after = cpu_times(env.gateway_pid)
    load = others.cores()
    row = Row(
        "gateway",
        "stream" if b'"stream":true' in body else "json",
        conc,
        res["requests"],
        res["rps"],
        res["p50_us"] / 1000,
        res["p99_us"] / 1000,
    )
    row.cpu_ms = (after[0] - before[0]) * 1000 / res["requests"]
    row.main_cpu_ms = (after[1] - before[1]) * 1000 / res["requests"]
    row.others = load
    return res, row


# ----------------------------------------------------------------------------------------------
# A/B and ablation: gateways started with other sources or switches
# ----------------------------------------------------------------------------------------------
def _compare_table(args: argparse.Namespace, got: dict[tuple[str, str, int], list[Row]]) -> str:
    import statistics

    def med(rows: list[Row], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rows)

    lines = [
        f"Medians of {args.repeat} alternating runs; baseline = {args.src or 'installed'} at --log-level "
        f"{args.log_level}; candidate = {args.compare or args.src or 'installed'} at --log-level "
        f"{args.compare_log_level or args.log_level}",
        "",
        "| mode | conc | CPU ms/req base | cand | Δ | main-thread base | cand | req/s base | cand "
        "| p50 base | cand | p99 base | cand |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("json", "stream"):
        for conc in args.compare_concurrency:
            b, c = got[("baseline", mode, conc)], got[("candidate", mode, conc)]
            lines.append(
                f"| {mode} | {conc} | {med(b, 'cpu_ms'):.3f} | {med(c, 'cpu_ms'):.3f} "
                f"| {med(c, 'cpu_ms') - med(b, 'cpu_ms'):+.3f} | {med(b, 'main_cpu_ms'):.3f} "
                f"| {med(c, 'main_cpu_ms'):.3f} | {med(b, 'rps'):,.0f} | {med(c, 'rps'):,.0f} "
                f"| {med(b, 'p50_ms'):.2f} | {med(c, 'p50_ms'):.2f} | {med(b, 'p99_ms'):.2f} | {med(c, 'p99_ms'):.2f} |"
            )
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> str:
    """Baseline (the installed insource) and a candidate copy of src/ (``--compare DIR``) side by side: both
    gateways up at once (each pinned to CPU 0, only one loaded at a time), runs alternating, medians reported."""
    envs: dict[str, Env] = {}
    try:
        base_args = ("--log-level", args.log_level)
        cand_args = ("--log-level", args.compare_log_level or args.log_level)
        lat = args.latency_ms
        envs["baseline"] = start_env(
            1, args.chunks, not args.no_pin, src=args.src, serve_args=base_args, latency_ms=lat
        )
        envs["candidate"] = start_env(
            1, args.chunks, not args.no_pin, src=args.compare or args.src, serve_args=cand_args, latency_ms=lat
        )
        for env in envs.values():
            for stream in (False, True):
                body = chat_body(stream)
                run_wrk(env.gateway_port, env.key, body, 16, args.requests, args.warmup, env.workdir, not args.no_pin)
        got: dict[tuple[str, str, int], list[Row]] = collections.defaultdict(list)
        for rep in range(args.repeat):
            for stream in (False, True):
                for conc in args.compare_concurrency:
                    names = ["baseline", "candidate"] if rep % 2 == 0 else ["candidate", "baseline"]
                    for name in names:
                        _, row = gateway_run(envs[name], envs[name].key, chat_body(stream), conc, args)
                        got[(name, row.mode, conc)].append(row)
                        print(f"| {name} | {fmt_row(row)[2:]}", flush=True)
    finally:
        for env in envs.values():
            env.close()
            shutil.rmtree(env.workdir, ignore_errors=True)
    return _compare_table(args, got)


def ablation(args: argparse.Namespace) -> list[tuple[str, Row]]:
    """Concurrency 16: gateway CPU per request with capture and/or budget+limit switched off (config only)."""
    out: list[tuple[str, Row]] = []
    for capture in (True, False):
        env = start_env(
            1, args.chunks, not args.no_pin, capture=capture, src=args.src, serve_args=("--log-level", args.log_level)
        )
        try:
            for stream in (False, True):
                body = chat_body(stream)
                run_wrk(env.gateway_port, env.key, body, 16, args.requests, args.warmup, env.workdir, not args.no_pin)
                for label, key in (("budget+rpm", env.key), ("no limits", env.plain_key)):
                    _, row = gateway_run(env, key, body, 16, args)
                    name = f"capture {'on' if capture else 'off'}, {label}"
                    out.append((name, row))
                    print(f"| {name} | {fmt_row(row)[2:]}", flush=True)
        finally:
            env.close()
            shutil.rmtree(env.workdir, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------
# the main run
# ----------------------------------------------------------------------------------------------
def _warmup(env: Env, args: argparse.Namespace) -> None:
    """Connection pools, caches, first-call imports (capture processing is imported lazily)."""
    pin_cpus = not args.no_pin
    for stream in (False, True):
        run_wrk(env.gateway_port, env.key, chat_body(stream), 16, args.requests, args.warmup, env.workdir, pin_cpus)
        run_wrk(env.upstream_port, None, chat_body(stream), 16, args.requests, args.warmup, env.workdir, pin_cpus)
    writer_idle(env)


def _direct_run(env: Env, body: bytes, mode: str, conc: int, args: argparse.Namespace) -> Row:
    others = OtherLoad(env)
    res = run_wrk(env.upstream_port, None, body, conc, args.requests, args.seconds, env.workdir, not args.no_pin)
    row = Row("direct", mode, conc, res["requests"], res["rps"], res["p50_us"] / 1000, res["p99_us"] / 1000)
    row.others = others.cores()
    return row


def _add_ttft(row: Row, port: int, key: str | None, body: bytes, args: argparse.Namespace) -> None:
    """Streams: TTFT percentiles from the probe client at the row's concurrency."""
    spec = {
        "mode": "conc",
        "targets": [[port, key]],
        "body": body.decode(),
        "concurrency": row.conc,
        "n": args.probe_n if row.conc == 1 else args.probe_n * 2,
        "seconds": args.seconds,
        "warmup": 0,
    }
    samples = run_probe(spec, not args.no_pin)[0]
    row.ttft_p50_ms = pct([s[0] for s in samples], 50) * 1000
    row.ttft_p99_ms = pct([s[0] for s in samples], 99) * 1000


def _load_rows(env: Env, args: argparse.Namespace) -> list[Row]:
    """Direct and gateway under wrk at each concurrency, non-streaming then streaming; rows printed as they come."""
    rows: list[Row] = []
    for stream in (False, True):
        mode = "stream" if stream else "json"
        body = chat_body(stream)
        for conc in args.concurrency:
            for target, port, key in (("direct", env.upstream_port, None), ("gateway", env.gateway_port, env.key)):
                if target == "gateway":
                    _, row = gateway_run(env, env.key, body, conc, args)
                else:
                    row = _direct_run(env, body, mode, conc, args)
                if stream:
                    _add_ttft(row, port, key, body, args)
                rows.append(row)
                print(fmt_row(row), flush=True)
    return rows


def _pairs(env: Env, args: argparse.Namespace, stream: bool) -> dict[str, Any]:
    """Concurrency 1, direct and gateway requests alternating: the per-request overhead of the gateway."""
    spec = {
        "mode": "pairs",
        "targets": [[env.upstream_port, None], [env.gateway_port, env.key]],
        "body": chat_body(stream).decode(),
        "n": args.pairs,
        "seconds": args.seconds * 2,
        "warmup": 50,
    }
    direct, gateway = run_probe(spec, not args.no_pin)
    d_total, g_total = [s[1] for s in direct], [s[1] for s in gateway]
    diffs = [g - d for g, d in zip(g_total, d_total, strict=True)]
    return {
        "pairs": len(diffs),
        "direct_p50_ms": pct(d_total, 50) * 1000,
        "gateway_p50_ms": pct(g_total, 50) * 1000,
        "delta_p50_ms": pct(diffs, 50) * 1000,
        "delta_p90_ms": pct(diffs, 90) * 1000,
        "direct_ttft_p50_ms": pct([s[0] for s in direct], 50) * 1000,
        "gateway_ttft_p50_ms": pct([s[0] for s in gateway], 50) * 1000,
        "gateway_max_ms": max(g_total) * 1000,
    }


def measure(env: Env, args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    _warmup(env, args)
    rows = _load_rows(env, args)
    extra = {("stream" if stream else "json"): _pairs(env, args, stream) for stream in (False, True)}
    return rows, extra
