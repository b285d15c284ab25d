"""Profiling: py-spy on the gateway under wrk load, summarised by thread, layer and function."""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import chat_body
from .load import run_wrk
from .procs import Env, cpu_times, stop, writer_idle


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
