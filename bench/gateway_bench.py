#!/usr/bin/env python
"""Gateway overhead benchmark: insource vs. direct-to-upstream, on loopback, in one run.

Starts everything itself on 127.0.0.1 and stops it by PID at the end:

* a cheap upstream (``bench/_upstream.py``: raw ASGI on uvicorn, pre-serialised bodies), pinned to CPU 1;
* the gateway (``insource serve``, one worker by default) with a key that has a budget and a rate limit,
  capture on (the default), pinned to CPU 0 so that its CPU time is its own;
* the load: ``wrk`` (pinned to CPU 1) with a Lua script that POSTs the chat body, stops after a fixed
  number of responses (or a time limit) and prints req/s and latency percentiles as JSON; and a small
  raw-socket probe client (uvloop, separate process, CPU 1) for streaming TTFT and for the concurrency-1
  stream comparison, where direct and gateway requests alternate on two kept-alive connections.

The gateway's CPU time (user+system, all threads, from psutil) is read before and after each load run,
after the background writer has drained, and divided by the number of completed requests.

Usage::

    python bench/gateway_bench.py            # full run (~3 min), writes bench/results/gateway.md
    python bench/gateway_bench.py --quick    # short run (~40 s)
    python bench/gateway_bench.py --quick --profile   # then py-spy the gateway under load, print top costs

Needs ``wrk`` (``apt-get install -y wrk``) and ``psutil``; ``--profile`` needs ``py-spy`` (``pip install py-spy``).

The work is done in ``bench/_gw/``: ``procs`` (upstream and gateway processes, CPU accounting), ``load`` (wrk and
the probe client, which runs as ``python bench/gateway_bench.py --_probe SPEC``), ``measure`` (the runs),
``report`` (table and Markdown) and ``profiling`` (py-spy). This file is the command line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the _gw package, also under `python -m`
from _gw.common import REPO, RESULTS
from _gw.load import probe_main
from _gw.measure import Row, ablation, compare, measure
from _gw.procs import start_env
from _gw.profiling import profile_gateway
from _gw.report import ABL_HEADER, ABL_RULE, HEADER, RULE, fmt_pairs, machine_facts, render
from _gw.soak import run_soak
from _gw.soak_report import SOAK_RESULTS, render_soak


def _int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="insource gateway overhead benchmark (vs. direct to the upstream)")
    p.add_argument("--quick", action="store_true", help="short run (~40 s)")
    p.add_argument("--requests", type=int, help="max requests per load run (default 300000; quick 100000)")
    p.add_argument("--seconds", type=float, help="seconds per load run (default 6; quick 2)")
    p.add_argument("--concurrency", type=_int_list, default=[1, 16, 64])
    p.add_argument("--chunks", type=int, default=16, help="content chunks per upstream stream")
    p.add_argument("--workers", type=int, default=1, help="gateway workers (only 1 is pinned)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--parts", default="main", help="comma list of: main, ablation, profile (default: main)")
    p.add_argument("--profile", action="store_true", help="add the profile part: py-spy the gateway under load")
    p.add_argument("--ablation", action="store_true", help="add the ablation part: capture / limits switched off")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--src", type=Path, help="run the gateway from this copy of src/ (PYTHONPATH), to try a patch")
    p.add_argument("--compare", type=Path, help="A/B: the baseline against this copy of src/ (not written)")
    p.add_argument("--repeat", type=int, default=3, help="alternating runs per variant with --compare")
    p.add_argument("--log-level", default="info", help="the gateway's --log-level (info: access log on)")
    p.add_argument(
        "--compare-log-level", metavar="LEVEL", help="A/B: the candidate (same source unless --compare) at this level"
    )
    p.add_argument("--compare-note", default="", help="what the --compare copy changes (written to the results)")
    p.add_argument("--compare-concurrency", type=_int_list, default=[1, 16], metavar="LIST")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(REPO)}")
    soak = p.add_argument_group("soak: slow upstream, RSS over time (writes bench/results/gateway_soak.md)")
    soak.add_argument("--soak", action="store_true", help="run the soak instead of the main table")
    soak.add_argument("--soak-requests", type=int, help="requests per soaked gateway (default 1000000; implies --soak)")
    soak.add_argument("--soak-window", type=int, default=50_000, help="requests per printed soak line (about)")
    soak.add_argument("--soak-concurrency", type=int, default=64)
    soak.add_argument("--tensorzero-soak-requests", type=int, help="requests for TensorZero's soak (default: same)")
    soak.add_argument(
        "--soak-key", choices=["limited", "plain"], default="limited", help="insource key: budget+RPM, or neither"
    )
    soak.add_argument("--soak-only-insource", action="store_true", help="do not soak the other gateways")
    soak.add_argument("--no-capture", action="store_true", help="insource with capture off ([capture] enabled = false)")
    soak.add_argument("--latency-ms", type=float, help="upstream latency (default: 20 with --soak, else 0)")
    soak.add_argument("--load-concurrency", type=_int_list, default=[64, 256], metavar="LIST")
    soak.add_argument("--cpu-concurrency", type=_int_list, default=[1, 64], metavar="LIST")
    soak.add_argument("--cpu-seconds", type=float, default=10.0, help="seconds per CPU-per-request run")
    soak.add_argument("--tensorzero-python", type=Path, help="TensorZero's venv python: its gateway side by side")
    soak.add_argument("--trace", type=Path, help="tracemalloc + GC timing in the gateway, dumped here per window")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    return p.parse_args()


def settle(args: argparse.Namespace) -> set[str]:
    """Fill in the defaults that depend on --quick and resolve paths; returns the parts to run."""
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    parts |= {"profile"} if args.profile else set()
    parts |= {"ablation"} if args.ablation else set()
    args.src = args.src.resolve() if args.src else None
    args.compare = args.compare.resolve() if args.compare else None
    if (args.compare is not None or args.compare_log_level) and args.parts == "main":
        parts = set()
    args.soak = args.soak or args.soak_requests is not None
    args.soak_requests = args.soak_requests or (100_000 if args.quick else 1_000_000)
    args.latency_ms = args.latency_ms if args.latency_ms is not None else (20.0 if args.soak else 0.0)
    args.trace = args.trace.resolve() if args.trace else None
    args.tensorzero_python = args.tensorzero_python.absolute() if args.tensorzero_python else None
    args.requests = args.requests or (100_000 if args.quick else 300_000)
    args.seconds = args.seconds or (2.0 if args.quick else 6.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.probe_n = 300 if args.quick else 1500
    args.pairs = 300 if args.quick else 2000
    return parts


def run_main_env(args: argparse.Namespace, parts: set[str]) -> tuple[list[Row], dict[str, Any], str | None]:
    """The main table and the profile, against one gateway and upstream started for them."""
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    profile = None
    env = start_env(
        args.workers,
        args.chunks,
        not args.no_pin,
        src=args.src,
        serve_args=("--log-level", args.log_level),
        latency_ms=args.latency_ms,
    )
    print(f"upstream :{env.upstream_port}  gateway :{env.gateway_port} (pid {env.gateway_pid})  work {env.workdir}")
    try:
        if "main" in parts:
            print(HEADER)
            print(RULE)
            rows, extra = measure(env, args)
            for mode in ("json", "stream"):
                print(fmt_pairs(mode, extra[mode]))
        if "profile" in parts:
            profile = profile_gateway(env, args)
            print(profile)
    finally:
        env.close()
        if args.keep:
            print(f"kept {env.workdir}")
        else:
            shutil.rmtree(env.workdir, ignore_errors=True)
    return rows, extra, profile


def soak_main(args: argparse.Namespace) -> None:
    facts = machine_facts(args.workers)
    rows, soaks = run_soak(args)
    text = render_soak(rows, soaks, facts, args)
    if not args.no_write:
        SOAK_RESULTS.write_text(text)
        print(f"wrote {SOAK_RESULTS}")
    print(text.split("## Targets", 1)[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_probe":
        probe_main(sys.argv[2])
        return
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    parts = settle(args)
    if args.soak:
        soak_main(args)
        return

    facts = machine_facts(args.workers)  # before the runs: the commit measured, not the one at the end
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    profile = None
    ablated: list[tuple[str, Row]] = []
    if parts & {"main", "profile"}:
        rows, extra, profile = run_main_env(args, parts)
    compared = None
    if args.compare is not None or args.compare_log_level:
        compared = compare(args)
        print(compared)
    if "ablation" in parts:
        print("\nAblation (concurrency 16):")
        print(ABL_HEADER)
        print(ABL_RULE)
        ablated = ablation(args)
    if "main" in parts:
        text = render(rows, extra, facts, args, profile, ablated, compared)
        if not args.no_write:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(text)
            print(f"wrote {RESULTS}")
        print("\n".join(text.splitlines()[-4:]) if not profile and not ablated else "")


if __name__ == "__main__":
    main()
