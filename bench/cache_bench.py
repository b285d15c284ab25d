#!/usr/bin/env python
"""What a response-cache hit costs the gateway: CPU per request at concurrency 16 with every request a hit, next to
the same requests with the cache off (each one relayed to the upstream), JSON and streamed.

Reuses the gateway benchmark's machinery (``bench/_gw``): the cheap upstream and the gateway pinned to their own
CPUs, ``wrk`` as the load, the gateway's CPU (all threads, psutil) read after its writer has drained.

Usage::

    python bench/cache_bench.py                 # ~1 min
    python bench/cache_bench.py --seconds 6 --concurrency 16,64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the _gw package
from _gw.common import CLIENT_CPU, GATEWAY_CPU
from _gw.load import run_wrk
from _gw.procs import Env, _start_gateway, _start_upstream, cpu_times, create_keys, free_port, pin, write_config

CACHE = "\n[cache]\nenabled = true\nttl_s = 3600\n\n[tenants.bench]\ncache = true\n"


def start(cache: bool, pin_cpus: bool) -> Env:
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="insource-cachebench-"))
    up_port, gw_port = free_port(), free_port()
    cfg = write_config(workdir, up_port, capture=True)
    if cache:
        cfg.write_text(cfg.read_text() + CACHE)
    key, plain = create_keys(cfg, workdir, None)
    env = Env(workdir, up_port, gw_port, key, plain, 1)
    try:
        up = _start_upstream(env, 16)
        gw = _start_gateway(env, cfg, None, ("--log-level", "warning"))
        if pin_cpus:
            pin(up.pid, CLIENT_CPU)
            pin(gw.pid, GATEWAY_CPU)
    except BaseException:
        env.close()
        raise
    return env


def cpu_per_request(env: Env, body: bytes, conns: int, seconds: float) -> tuple[float, float]:
    """(gateway CPU ms per request, requests per second)."""
    run_wrk(env.gateway_port, env.plain_key, body, conns, 2_000, 1, env.workdir, True)  # warm: fills the cache
    before = cpu_times(env.gateway_pid)[0]
    res = run_wrk(env.gateway_port, env.plain_key, body, conns, 10_000_000, seconds, env.workdir, True)
    from _gw.procs import writer_idle

    writer_idle(env)
    spent = cpu_times(env.gateway_pid)[0] - before
    return spent / res["requests"] * 1000, res["rps"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", default="16")
    args = p.parse_args()
    bodies = {
        mode: orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "What are your opening hours?"}],
                "temperature": 0,
                **({"stream": True} if mode == "stream" else {}),
            }
        )
        for mode in ("json", "stream")
    }
    print("| cache | mode | concurrency | gateway CPU per request | req/s |")
    print("|---|---|---:|---:|---:|")
    for cache in (False, True):
        env = start(cache, pin_cpus=True)
        try:
            for mode, body in bodies.items():
                for conns in (int(c) for c in args.concurrency.split(",")):
                    ms, rps = cpu_per_request(env, body, conns, args.seconds)
                    label = "on (all hits)" if cache else "off"
                    print(f"| {label} | {mode} | {conns} | {ms:.3f} ms | {rps:,.0f} |", flush=True)
        finally:
            env.close()


if __name__ == "__main__":
    main()
