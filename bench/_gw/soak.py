"""The slow-upstream scenarios: 20 ms upstream latency at concurrency 64 and 256, CPU per request at 1 and 64,
and a soak of N requests with the gateway's RSS, window p50/p99 and CPU per request printed over time; insource,
the upstream direct and, with ``--tensorzero-python``, TensorZero's gateway side by side in the same run."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .common import GATEWAY_CPU, HERE, PATH, chat_body
from .load import run_wrk
from .measure import OtherLoad
from .procs import Env, cpu_times, pin, writer_idle

TZ_SCRIPT = HERE / "_gw" / "tz_gateway.py"
TZ_MODEL = "tensorzero::model_name::gpt-4o-mini"


@dataclass
class Target:
    name: str  # direct, insource, tensorzero
    port: int
    path: str = PATH
    key: str | None = None
    model: str = "gpt-4o-mini"
    pid: int | None = None  # the gateway process (CPU and RSS); None: the upstream itself

    def body(self, stream: bool = False) -> bytes:
        return chat_body(stream).replace(b'"model":"gpt-4o-mini"', f'"model":"{self.model}"'.encode())


@dataclass
class Sample:
    target: str
    phase: str  # fresh, soak, after soak
    conc: int
    requests: int  # this run's; for soak windows, the running total is `done`
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float | None
    rss_mb: float | None
    others: float
    done: int = 0


def rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def start_tensorzero(env: Env, python: Path, pin_cpus: bool) -> Target:
    """TensorZero's Rust gateway from its own venv, serving the same upstream; stopped with the env."""
    out = env.workdir / "tensorzero.out"
    proc = subprocess.Popen(
        [str(python), str(TZ_SCRIPT), "--upstream-port", str(env.upstream_port), "--config-dir", str(env.workdir)],
        cwd=env.workdir,
        stdout=env.log("tensorzero.out"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"},
    )
    env.procs.append(("tensorzero", proc))
    deadline = time.monotonic() + 60
    line = ""
    while not line and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        line = next((ln for ln in out.read_text().splitlines() if ln.startswith("BASE_URL ")), "")
    if not line:
        raise RuntimeError(f"TensorZero did not start; see {out}")
    base = line.split()[1].rstrip("/")  # http://127.0.0.1:PORT/openai/v1
    port = int(base.split(":")[2].split("/")[0])
    if pin_cpus:
        pin(proc.pid, GATEWAY_CPU)
    path = "/" + base.split("/", 3)[3] + "/chat/completions"
    return Target("tensorzero", port, path, None, TZ_MODEL, proc.pid)


def run_once(env: Env, t: Target, conc: int, seconds: float, args: argparse.Namespace, phase: str) -> Sample:
    """One wrk run (time-bound) against a target, with the gateway's CPU (writer drained, for insource)."""
    if t.name == "insource":
        writer_idle(env)
    others = OtherLoad(env)
    before = cpu_times(t.pid)[0] if t.pid else 0.0
    res = run_wrk(t.port, t.key, t.body(), conc, 10**9, seconds, env.workdir, not args.no_pin, t.path)
    if t.name == "insource":
        writer_idle(env)
    cpu = (cpu_times(t.pid)[0] - before) * 1000 / res["requests"] if t.pid else None
    return Sample(
        t.name,
        phase,
        conc,
        res["requests"],
        res["rps"],
        res["p50_us"] / 1000,
        res["p99_us"] / 1000,
        cpu,
        rss_mb(t.pid) if t.pid else None,
        others.cores(),
    )


def fmt(s: Sample) -> str:
    cpu = "" if s.cpu_ms is None else f"{s.cpu_ms:.3f}"
    rss = "" if s.rss_mb is None else f"{s.rss_mb:.0f}"
    return (
        f"| {s.target} | {s.phase} | {s.conc} | {s.requests:,} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} "
        f"| {cpu} | {rss} | {s.others:.2f} |"
    )


HEADER = (
    "| target | phase | conc | requests | req/s | p50 ms | p99 ms | gw CPU ms/req | RSS MB | others' load (cores) |"
)
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
SOAK_HEADER = (
    "| target | requests done | RSS MB | window req/s | window p50 ms | window p99 ms | gw CPU ms/req | others' load |"
)
SOAK_RULE = "|---|---:|---:|---:|---:|---:|---:|---:|"


def fmt_window(s: Sample) -> str:
    cpu = "" if s.cpu_ms is None else f"{s.cpu_ms:.3f}"
    return (
        f"| {s.target} | {s.done:,} | {s.rss_mb or 0:.1f} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} "
        f"| {cpu} | {s.others:.2f} |"
    )


def soak(env: Env, t: Target, args: argparse.Namespace, trace: Path | None) -> list[Sample]:
    """`args.soak_requests` requests at `args.soak_concurrency` in windows of about `args.soak_window`, one line
    each (the window's length in seconds is set from the last window's rate, so its count is approximate)."""
    assert t.pid is not None
    out: list[Sample] = []
    total = args.soak_requests if t.name == "insource" else (args.tensorzero_soak_requests or args.soak_requests)
    done, rate = 0, float(args.soak_concurrency) / (args.latency_ms / 1000 + 0.005)
    start = Sample(t.name, "soak", args.soak_concurrency, 0, 0, 0, 0, None, rss_mb(t.pid), 0.0)
    print(fmt_window(start), flush=True)
    out.append(start)
    while done < total:
        seconds = max(1, round(min(args.soak_window, total - done) / max(rate, 1.0)))
        others = OtherLoad(env)
        before = cpu_times(t.pid)[0]
        res = run_wrk(
            t.port, t.key, t.body(), args.soak_concurrency, 10**9, seconds, env.workdir, not args.no_pin, t.path
        )
        cpu = (cpu_times(t.pid)[0] - before) * 1000 / res["requests"]
        done += res["requests"]
        rate = res["rps"]
        s = Sample(
            t.name, "soak", args.soak_concurrency, res["requests"], rate, res["p50_us"] / 1000,
            res["p99_us"] / 1000, cpu, rss_mb(t.pid), others.cores(), done,
        )  # fmt: skip
        print(fmt_window(s), flush=True)
        out.append(s)
        if trace is not None and t.name == "insource":
            os.kill(t.pid, signal.SIGUSR1)
            time.sleep(0.5)
    return out


def scenario_rows(env: Env, targets: list[Target], args: argparse.Namespace, phase: str) -> list[Sample]:
    """Each target at each load concurrency (20 ms upstream), then the gateways' CPU per request at each
    CPU concurrency; the targets alternate within a concurrency so that machine load hits them alike."""
    rows: list[Sample] = []
    for conc in args.load_concurrency:
        for t in targets:
            rows.append(run_once(env, t, conc, args.seconds, args, phase))
            print(fmt(rows[-1]), flush=True)
    for conc in args.cpu_concurrency:
        for t in targets:
            if t.pid is not None:
                rows.append(run_once(env, t, conc, args.cpu_seconds, args, phase + " (CPU)"))
                print(fmt(rows[-1]), flush=True)
    return rows


def run_soak(args: argparse.Namespace) -> tuple[list[Sample], dict[str, list[Sample]]]:
    """Fresh scenario rows, a soak of each gateway, the scenario rows again; everything in one environment."""
    from .procs import start_env

    trace = {"INSOURCE_BENCH_TRACE": str(args.trace)} if args.trace else None
    env = start_env(
        1, args.chunks, not args.no_pin, src=args.src, serve_args=("--log-level", args.log_level),
        latency_ms=args.latency_ms, extra_env=trace, capture=not args.no_capture,
    )  # fmt: skip
    try:
        targets = [
            Target("direct", env.upstream_port),
            Target(
                "insource",
                env.gateway_port,
                key=env.plain_key if args.soak_key == "plain" else env.key,
                pid=env.gateway_pid,
            ),
        ]
        if args.tensorzero_python:
            targets.append(start_tensorzero(env, args.tensorzero_python, not args.no_pin))
        print(f"work {env.workdir}; " + ", ".join(f"{t.name} :{t.port} pid {t.pid}" for t in targets))
        for t in targets:  # warm-up: connection pools, lazy imports
            run_wrk(t.port, t.key, t.body(), 64, 10**9, 2, env.workdir, not args.no_pin, t.path)
        print(HEADER + "\n" + RULE)
        rows = scenario_rows(env, targets, args, "fresh")
        soaks: dict[str, list[Sample]] = {}
        for t in targets:
            if t.pid is not None and (t.name == "insource" or not args.soak_only_insource):
                print(f"\nsoak: {t.name} at concurrency {args.soak_concurrency}")
                print(SOAK_HEADER + "\n" + SOAK_RULE)
                soaks[t.name] = soak(env, t, args, args.trace)
        print("\n" + HEADER + "\n" + RULE)
        rows += scenario_rows(env, targets, args, "after soak")
    finally:
        env.close()
        if not args.keep:
            import shutil

            shutil.rmtree(env.workdir, ignore_errors=True)
    return rows, soaks
