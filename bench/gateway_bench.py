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

Needs ``wrk`` (``apt-get install -y wrk``); ``--profile`` needs ``py-spy`` (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "gateway.md"
GATEWAY_CPU = 0
CLIENT_CPU = 1
PATH = "/v1/chat/completions"

CPU_TARGET_MS = 0.35
STREAM_DELTA_TARGET_MS = 1.0


def chat_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful support assistant for an online shop. Be brief."},
            {
                "role": "user",
                "content": "Hello! I ordered a blue jacket last week (order 48213) and it arrived "
                "in the wrong size. Can I get a refund or an exchange?",
            },
        ],
        "max_tokens": 128,
        "temperature": 0.2,
        "metadata": {"task": "support-triage"},
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout:g}s ({last})")


def pin(pid: int, cpu: int | None) -> None:
    if cpu is None:
        return
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(pid)
        for proc in [p, *p.children(recursive=True)]:
            proc.cpu_affinity([cpu])
        for t in p.threads():  # threads already started keep their own mask
            with contextlib.suppress(OSError):
                os.sched_setaffinity(t.id, {cpu})


def stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 10.0) -> None:
    """Stop one process we started, by its PID: SIGINT, then SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            print(f"  {name} (pid {proc.pid}) still running after {sig.name}", file=sys.stderr)


CLI_CODE = "import sys; sys.argv[0] = 'insource'; from insource.cli import main; main()"


def child_env(src: Path | None) -> dict[str, str]:
    """The environment of the gateway and CLI: `--src DIR` puts another copy of insource first on the path."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def cli(args: list[str], cwd: Path, src: Path | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CLI_CODE, *args],
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
        env=child_env(src),
    )
    if out.returncode != 0:
        raise RuntimeError(f"insource {' '.join(args)} failed: {out.stderr.decode()[-2000:]}")
    return out.stdout.decode()


@dataclass
class Env:
    workdir: Path
    upstream_port: int
    gateway_port: int
    key: str  # budget + rpm limit
    plain_key: str  # no budget, no limit
    workers: int
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    logs: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def gateway_pid(self) -> int:
        assert self.gateway is not None
        return self.gateway.pid

    def close(self) -> None:
        for name, proc in reversed(self.procs):
            stop(proc, name)
        self.logs.close()

    def log(self, name: str) -> Any:
        return self.logs.enter_context((self.workdir / name).open("wb"))


def start_env(workers: int, chunks: int, pin_cpus: bool, *, capture: bool = True, src: Path | None = None) -> Env:
    workdir = Path(tempfile.mkdtemp(prefix="insource-bench-"))
    up_port, gw_port = free_port(), free_port()
    cfg = workdir / "insource.toml"
    cfg.write_text(
        f"""
[store]
url = "sqlite:///{workdir}/insource.db"

[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:{up_port}/v1"
terms = "self-hosted"

[models."gpt-4o-mini"]
targets = ["local:gpt-4o-mini"]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
{"" if capture else chr(10) + "[capture]" + chr(10) + "enabled = false" + chr(10)}"""
    )
    created = json.loads(
        cli(
            [
                "keys",
                "create",
                "--tenant",
                "bench",
                "--budget-usd",
                "1000",
                "--rpm",
                "100000000",
                "--json",
                "--config",
                str(cfg),
            ],
            workdir,
            src,
        )
    )
    plain = json.loads(cli(["keys", "create", "--tenant", "bench", "--json", "--config", str(cfg)], workdir, src))
    env = Env(workdir, up_port, gw_port, created["key"], plain["key"], workers)
    try:
        up = subprocess.Popen(
            [sys.executable, str(HERE / "_upstream.py"), "--port", str(up_port), "--chunks", str(chunks)],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=env.log("upstream.log"),
        )
        env.procs.append(("upstream", up))
        wait_http(f"http://127.0.0.1:{up_port}/healthz", 20, up)
        gw = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLI_CODE,
                "serve",
                "--config",
                str(cfg),
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                "--workers",
                str(workers),
            ],
            cwd=workdir,
            stdout=env.log("gateway.out"),
            stderr=env.log("gateway.log"),
            env=child_env(src),
        )
        env.procs.append(("gateway", gw))
        env.gateway = gw
        wait_http(f"http://127.0.0.1:{gw_port}/healthz", 60, gw)
        if pin_cpus:
            pin(up.pid, CLIENT_CPU)
            if workers == 1:
                pin(gw.pid, GATEWAY_CPU)
    except BaseException:
        env.close()
        raise
    return env


# ----------------------------------------------------------------------------------------------
# gateway CPU accounting
# ----------------------------------------------------------------------------------------------
def cpu_times(pid: int) -> tuple[float, float]:
    """(all threads of the process tree, main threads only) user+system seconds."""
    total = main = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
            for th in proc.threads():
                if th.id == proc.pid:
                    main += th.user_time + th.system_time
    return total, main


def writer_idle(env: Env, timeout: float = 20.0) -> None:
    """Wait until the gateway's background writer has nothing queued (its CPU belongs to the run)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{env.gateway_port}/healthz"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as resp:
            report = json.loads(resp.read())
        if report.get("writer", {}).get("queued", 0) == 0:
            time.sleep(0.12)  # the batch in hand, if any
            return
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# wrk
# ----------------------------------------------------------------------------------------------
WRK_LUA = r"""
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(auth)s
local max_requests = %(max)d
local counter = 0
local bad = 0
function response(status, headers, body)
  counter = counter + 1
  if status ~= 200 then bad = bad + 1 end
  if counter >= max_requests then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%.1f,"max_us":%%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def run_wrk(
    port: int,
    key: str | None,
    body: bytes,
    conns: int,
    max_requests: int,
    seconds: float,
    workdir: Path,
    pin_cpus: bool,
) -> dict[str, Any]:
    script = workdir / f"wrk-{port}-{conns}-{len(body)}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    script.write_text(WRK_LUA % {"body": body.decode(), "auth": auth, "max": max_requests})
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    if pin_cpus:
        cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
    out = subprocess.run(cmd, capture_output=True, timeout=seconds + 60, check=False)
    text = out.stdout.decode()
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {text[-1500:]} {out.stderr.decode()[-1500:]}")
    res = json.loads(line[8:])
    errors = {k: res[k] for k in ("connect", "read", "write", "status", "timeout") if res[k]}
    if errors:
        raise RuntimeError(f"wrk saw errors against port {port}: {errors}")
    # wrk's main thread always sleeps the whole -d before it joins, so summary.duration is -d even when the
    # Lua count bound stopped the load early: then use Little's law (connections / mean latency) instead.
    res["capped"] = res["requests"] >= max_requests
    res["rps"] = conns / (res["mean_us"] / 1e6) if res["capped"] else res["requests"] / (res["duration_us"] / 1e6)
    return res


# ----------------------------------------------------------------------------------------------
# the probe client (separate process): TTFT and whole-stream latency over raw keep-alive sockets
# ----------------------------------------------------------------------------------------------
class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_end = -1
        self.chunked = False
        self.length = -1
        self.t_first: float | None = None
        self.done: asyncio.Future[float] | None = None
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        if self.head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            if not self.chunked:
                i = head.find(b"content-length:")
                self.length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
        if self.t_first is None and (buf.find(b"data:", self.head_end) >= 0 or not self.chunked):
            self.t_first = now
        complete = (
            (buf.endswith(b"0\r\n\r\n") and len(buf) - self.head_end >= 5)
            if self.chunked
            else (len(buf) - self.head_end >= self.length)
        )
        if complete and self.done is not None and not self.done.done():
            self.done.set_result(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))

    async def request(self, raw: bytes) -> tuple[float, float]:
        """Send one request; returns (ttft_s, total_s)."""
        self.buf = bytearray()
        self.head_end = -1
        self.t_first = None
        self.done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        t0 = time.perf_counter()
        self.transport.write(raw)
        t_end = await self.done
        if self.status != 200:
            raise RuntimeError(f"status {self.status}: {bytes(self.buf[:300])!r}")
        assert self.t_first is not None
        return self.t_first - t0, t_end - t0


def raw_request(port: int, key: str | None, body: bytes) -> bytes:
    head = [
        f"POST {PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _probe(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + spec["seconds"]
    targets = spec["targets"]  # [[port, key-or-null], ...]
    body = spec["body"].encode()
    raws = [raw_request(port, key, body) for port, key in targets]
    samples: list[list[tuple[float, float]]] = [[] for _ in targets]

    if spec["mode"] == "pairs":  # one connection per target, alternate, order swapped every pair
        conns = [(await loop.create_connection(_Conn, "127.0.0.1", port))[1] for port, _ in targets]
        for _ in range(spec["warmup"]):
            for c, raw in zip(conns, raws, strict=True):
                await c.request(raw)
        for i in range(spec["n"]):
            if time.monotonic() > deadline:
                break
            order = range(len(conns)) if i % 2 == 0 else reversed(range(len(conns)))
            for j in order:
                samples[j].append(await conns[j].request(raws[j]))
        for c in conns:
            assert c.transport is not None
            c.transport.close()
    else:  # `concurrency` connections to targets[0], `n` requests in all
        left = spec["n"]

        async def worker() -> None:
            nonlocal left
            _, c = await loop.create_connection(_Conn, "127.0.0.1", targets[0][0])
            try:
                while left > 0 and time.monotonic() < deadline:
                    left -= 1
                    samples[0].append(await c.request(raws[0]))
            finally:
                assert c.transport is not None
                c.transport.close()

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    return {"samples": samples}


def probe_main(spec_json: str) -> None:
    import uvloop

    spec = json.loads(spec_json)
    out = uvloop.run(_probe(spec))
    Path(spec["out"]).write_text(json.dumps(out))  # a file: a large write to a pipe at exit can be cut short


def run_probe(spec: dict[str, Any], pin_cpus: bool) -> list[list[tuple[float, float]]]:
    with tempfile.TemporaryDirectory(prefix="insource-probe-") as tmp:
        result = Path(tmp) / "samples.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_probe", json.dumps({**spec, "out": str(result)})]
        if pin_cpus:
            cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
        out = subprocess.run(cmd, capture_output=True, timeout=spec["seconds"] + 60, check=False)
        if out.returncode != 0 or not result.exists():
            raise RuntimeError(f"probe failed ({out.returncode}): {out.stderr.decode()[-2000:]}")
        samples: list[list[tuple[float, float]]] = json.loads(result.read_text())["samples"]
        return samples


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
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


def compare(args: argparse.Namespace) -> str:
    """Baseline (the installed insource) and a candidate copy of src/ (``--compare DIR``) side by side: both
    gateways up at once (each pinned to CPU 0, only one loaded at a time), runs alternating, medians reported."""
    import statistics

    envs: dict[str, Env] = {}
    try:
        envs["baseline"] = start_env(1, args.chunks, not args.no_pin, src=args.src)
        envs["candidate"] = start_env(1, args.chunks, not args.no_pin, src=args.compare)
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
    lines = [
        f"Medians of {args.repeat} alternating runs; candidate = {args.compare}",
        "",
        "| mode | conc | CPU ms/req base | cand | Δ | main-thread base | cand | req/s base | cand "
        "| p50 base | cand | p99 base | cand |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("json", "stream"):
        for conc in args.compare_concurrency:
            b, c = got[("baseline", mode, conc)], got[("candidate", mode, conc)]

            def med(rows: list[Row], attr: str) -> float:
                return statistics.median(getattr(r, attr) for r in rows)

            lines.append(
                f"| {mode} | {conc} | {med(b, 'cpu_ms'):.3f} | {med(c, 'cpu_ms'):.3f} "
                f"| {med(c, 'cpu_ms') - med(b, 'cpu_ms'):+.3f} | {med(b, 'main_cpu_ms'):.3f} "
                f"| {med(c, 'main_cpu_ms'):.3f} | {med(b, 'rps'):,.0f} | {med(c, 'rps'):,.0f} "
                f"| {med(b, 'p50_ms'):.2f} | {med(c, 'p50_ms'):.2f} | {med(b, 'p99_ms'):.2f} | {med(c, 'p99_ms'):.2f} |"
            )
    return "\n".join(lines)


def ablation(args: argparse.Namespace) -> list[tuple[str, Row]]:
    """Concurrency 16: gateway CPU per request with capture and/or budget+limit switched off (config only)."""
    out: list[tuple[str, Row]] = []
    for capture in (True, False):
        env = start_env(1, args.chunks, not args.no_pin, capture=capture, src=args.src)
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


def measure(env: Env, args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    pin_cpus = not args.no_pin
    n_req = args.requests
    secs = args.seconds
    gw_key = env.key
    # warm-up: connection pools, caches, first-call imports (capture processing is imported lazily)
    for stream in (False, True):
        run_wrk(env.gateway_port, gw_key, chat_body(stream), 16, n_req, args.warmup, env.workdir, pin_cpus)
        run_wrk(env.upstream_port, None, chat_body(stream), 16, n_req, args.warmup, env.workdir, pin_cpus)
    writer_idle(env)

    for stream in (False, True):
        mode = "stream" if stream else "json"
        body = chat_body(stream)
        for conc in args.concurrency:
            for target, port, key in (("direct", env.upstream_port, None), ("gateway", env.gateway_port, gw_key)):
                if target == "gateway":
                    res, row = gateway_run(env, gw_key, body, conc, args)
                else:
                    others = OtherLoad(env)
                    res = run_wrk(port, key, body, conc, n_req, secs, env.workdir, pin_cpus)
                    row = Row(
                        target, mode, conc, res["requests"], res["rps"], res["p50_us"] / 1000, res["p99_us"] / 1000
                    )
                    row.others = others.cores()
                if stream:
                    spec = {
                        "mode": "conc",
                        "targets": [[port, key]],
                        "body": body.decode(),
                        "concurrency": conc,
                        "n": args.probe_n if conc == 1 else args.probe_n * 2,
                        "seconds": secs,
                        "warmup": 0,
                    }
                    samples = run_probe(spec, pin_cpus)[0]
                    row.ttft_p50_ms = pct([s[0] for s in samples], 50) * 1000
                    row.ttft_p99_ms = pct([s[0] for s in samples], 99) * 1000
                rows.append(row)
                print(fmt_row(row), flush=True)

    # concurrency 1, direct and gateway requests alternating: the per-request overhead of the gateway
    extra: dict[str, Any] = {}
    for stream in (False, True):
        spec = {
            "mode": "pairs",
            "targets": [[env.upstream_port, None], [env.gateway_port, gw_key]],
            "body": chat_body(stream).decode(),
            "n": args.pairs,
            "seconds": secs * 2,
            "warmup": 50,
        }
        direct, gateway = run_probe(spec, pin_cpus)
        d_total, g_total = [s[1] for s in direct], [s[1] for s in gateway]
        diffs = [g - d for g, d in zip(g_total, d_total, strict=True)]
        extra["stream" if stream else "json"] = {
            "pairs": len(diffs),
            "direct_p50_ms": pct(d_total, 50) * 1000,
            "gateway_p50_ms": pct(g_total, 50) * 1000,
            "delta_p50_ms": pct(diffs, 50) * 1000,
            "delta_p90_ms": pct(diffs, 90) * 1000,
            "direct_ttft_p50_ms": pct([s[0] for s in direct], 50) * 1000,
            "gateway_ttft_p50_ms": pct([s[0] for s in gateway], 50) * 1000,
            "gateway_max_ms": max(g_total) * 1000,
        }
    return rows, extra


HEADER = (
    "| target | mode | conc | requests | req/s | p50 ms | p99 ms | TTFT p50 | TTFT p99 "
    "| gw CPU ms/req | gw main-thread ms/req | others' load (cores) |"
)
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _f(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def fmt_row(r: Row) -> str:
    return (
        f"| {r.target} | {r.mode} | {r.conc} | {r.requests} | {r.rps:,.0f} | {_f(r.p50_ms)} | {_f(r.p99_ms)} "
        f"| {_f(r.ttft_p50_ms)} | {_f(r.ttft_p99_ms)} | {_f(r.cpu_ms, 3)} | {_f(r.main_cpu_ms, 3)} "
        f"| {_f(r.others, 2)} |"
    )


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
    commit = (
        subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, check=False)
        .stdout.decode()
        .strip()
    )
    dirty = (
        subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, check=False)
        .stdout.decode()
        .strip()
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{model}, {os.cpu_count()} cores",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "stack": ", ".join(versions),
        "load": wrk_v or "wrk",
        "gateway": f"insource {commit}{' (src modified)' if dirty else ''}, {workers} worker(s)",
    }


ABL_HEADER = "| variant " + HEADER
ABL_RULE = "|---" + RULE


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
        "",
        HEADER,
        RULE,
        *[fmt_row(r) for r in rows],
        "",
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
    json_cpu = [r.cpu_ms for r in rows if r.target == "gateway" and r.mode == "json" and r.cpu_ms is not None]
    best = min(json_cpu) if json_cpu else float("nan")
    delta = extra["stream"]["delta_p50_ms"]
    lines += [
        "",
        "Targets:",
        "",
        f"- gateway CPU per non-streaming request ≤ {CPU_TARGET_MS} ms: measured {best:.3f}–{max(json_cpu):.3f} ms "
        f"→ {'met' if max(json_cpu) <= CPU_TARGET_MS else 'NOT met'}.",
        f"- whole-stream latency added at concurrency 1 ≤ {STREAM_DELTA_TARGET_MS} ms: measured {delta:.3f} ms "
        f"→ {'met' if delta <= STREAM_DELTA_TARGET_MS else 'NOT met'}.",
    ]
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
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# profiling
# ----------------------------------------------------------------------------------------------
def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (pkg/file.py)"; native frames kept as they are
    if " (" not in frame:
        return frame
    func, rest = frame.split(" (", 1)
    path = rest.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


LAYERS = (  # (label, substring of the leaf frame's path)
    ("uvicorn (HTTP server, ASGI glue)", "uvicorn/"),
    ("starlette (routing, middleware, Request)", "starlette/"),
    ("aiohttp/yarl/multidict (upstream client)", ("aiohttp/", "yarl/", "multidict/")),
    ("insource capture (redaction, hashing)", "insource/capture/"),
    ("insource store (SQLite writes, writer)", "insource/store/"),
    ("insource other (service, server, metering, providers)", "insource/"),
    ("asyncio (tasks, timeouts, runners)", "asyncio/"),
    ("stdlib other (uuid, hmac, re, threading, ...)", "lib/python3"),
)


def _layer(frame: str) -> str:
    path = frame.rsplit(" (", 1)[-1]
    if frame.startswith("Runner.run ") or frame.startswith("run_forever"):
        return "event loop C code (uvloop: epoll, socket I/O, callbacks)"
    for label, marks in LAYERS:
        if any(m in path for m in ((marks,) if isinstance(marks, str) else marks)):
            return label
    return "other / native"


def summarise_profile(raw: Path, top: int, cpu_ms: float | None = None) -> str:
    """Self and inclusive time per function from py-spy's raw (collapsed) output, split by thread and layer.
    With `cpu_ms` (the measured gateway CPU per request in the same run), shares are also shown as ms/req."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        full = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not full:
            continue
        frames = [_frame_name(f) for f in full]
        total += count
        writer = any("BatchWriter._run" in f for f in frames)
        pool = not writer and frames[0].startswith("Thread._bootstrap")
        threads["writer thread" if writer else "other threads" if pool else "event loop thread"] += count
        self_t[frames[-1]] += count
        layers[_layer(full[-1])] += count
        for f in set(frames):
            incl[f] += count

    def share(c: int) -> str:
        ms = f"  ≈{cpu_ms * c / total:.3f} ms/req" if cpu_ms else ""
        return f"{100 * c / total:5.1f}%{ms}"

    out = [f"{total} samples of the thread holding the GIL (py-spy --gil).", "", "By thread:"]
    out += [f"  {share(c)}  {name}" for name, c in threads.most_common()]
    out += ["", "By layer (self time of the innermost frame):"]
    out += [f"  {share(c)}  {name}" for name, c in layers.most_common()]
    out += ["", f"Top {top} functions by self time:"]
    out += [f"  {share(c)}  {f}" for f, c in self_t.most_common(top)]
    out += ["", f"Top {top} insource functions by inclusive time:"]
    skip = ("main (insource/cli", "serve (insource/cli", "handle_errors.")
    shown = [(f, c) for f, c in incl.most_common() if "insource/" in f and not f.startswith(skip)][:top]
    out += [f"  {share(c)}  {f}" for f, c in shown]
    return "\n".join(out)


def profile_gateway(env: Env, args: argparse.Namespace) -> str:
    if shutil.which("py-spy") is None:
        return "py-spy not found: pip install py-spy"
    out_dir = Path(tempfile.mkdtemp(prefix="insource-profile-"))
    parts = []
    for stream in (False, True):
        mode = "stream" if stream else "json"
        raw = out_dir / f"gateway-{mode}.txt"
        seconds = max(3, int(args.seconds))
        cmd = [
            "py-spy",
            "record",
            "--pid",
            str(env.gateway_pid),
            "--rate",
            str(args.rate),
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
            "--gil",  # only the thread holding the GIL: CPU spent in Python, not time waiting for the GIL
        ]
        if args.native:
            cmd.append("--native")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            before = cpu_times(env.gateway_pid)
            res = run_wrk(
                env.gateway_port, env.key, chat_body(stream), 16, 10**7, seconds, env.workdir, not args.no_pin
            )
            spy.wait(seconds + 30)
            writer_idle(env)
            cpu_ms = (cpu_times(env.gateway_pid)[0] - before[0]) * 1000 / res["requests"]
        finally:
            stop(spy, "py-spy")
        if raw.exists():
            parts.append(
                f"### {mode}, concurrency 16: {cpu_ms:.3f} ms CPU/req while sampled ({raw})\n"
                f"{summarise_profile(raw, args.top, cpu_ms)}"
            )
        else:
            parts.append(f"### {mode}: py-spy failed: {spy.stderr.read().decode()[-500:] if spy.stderr else ''}")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_probe":
        probe_main(sys.argv[2])
        return
    p = argparse.ArgumentParser(description="insource gateway overhead benchmark (vs. direct to the upstream)")
    p.add_argument("--quick", action="store_true", help="short run (~40 s)")
    p.add_argument("--requests", type=int, help="max requests per load run (default 300000; quick 100000)")
    p.add_argument("--seconds", type=float, help="seconds per load run (default 6; quick 2)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
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
    p.add_argument("--compare-note", default="", help="what the --compare copy changes (written to the results)")
    p.add_argument(
        "--compare-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16], metavar="LIST"
    )
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(REPO)}")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    parts |= {"profile"} if args.profile else set()
    parts |= {"ablation"} if args.ablation else set()
    args.src = args.src.resolve() if args.src else None
    args.compare = args.compare.resolve() if args.compare else None
    if args.compare is not None and args.parts == "main":
        parts = set()
    args.requests = args.requests or (100_000 if args.quick else 300_000)
    args.seconds = args.seconds or (2.0 if args.quick else 6.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.probe_n = 300 if args.quick else 1500
    args.pairs = 300 if args.quick else 2000

    facts = machine_facts(args.workers)  # before the runs: the commit measured, not the one at the end
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    profile = None
    ablated: list[tuple[str, Row]] = []
    if parts & {"main", "profile"}:
        env = start_env(args.workers, args.chunks, not args.no_pin, src=args.src)
        print(f"upstream :{env.upstream_port}  gateway :{env.gateway_port} (pid {env.gateway_pid})  work {env.workdir}")
        try:
            if "main" in parts:
                print(HEADER)
                print(RULE)
                rows, extra = measure(env, args)
                for mode in ("json", "stream"):
                    e = extra[mode]
                    print(
                        f"c=1 {mode}: direct p50 {e['direct_p50_ms']:.3f} ms, gateway p50 {e['gateway_p50_ms']:.3f}"
                        f" ms, added p50 {e['delta_p50_ms']:.3f} ms (p90 {e['delta_p90_ms']:.3f});"
                        f" TTFT {e['direct_ttft_p50_ms']:.3f} → {e['gateway_ttft_p50_ms']:.3f} ms"
                    )
            if "profile" in parts:
                profile = profile_gateway(env, args)
                print(profile)
        finally:
            env.close()
            if args.keep:
                print(f"kept {env.workdir}")
            else:
                shutil.rmtree(env.workdir, ignore_errors=True)
    compared = None
    if args.compare is not None:
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
