"""Process control: the upstream and the gateway started on loopback, pinned, stopped by PID; CPU accounting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .common import CLIENT_CPU, GATEWAY_CPU, UPSTREAM


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
# with INSOURCE_BENCH_TRACE=DIR: tracemalloc and GC timing in the gateway, dumped on SIGUSR1 (bench/_gw/traced.py)
TRACED_CODE = f"import sys; sys.path.insert(0, {str(UPSTREAM.parent)!r}); from _gw.traced import install; install(); "


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


def write_config(workdir: Path, up_port: int, capture: bool) -> Path:
    """The gateway's insource.toml: one local provider (the upstream), one priced model, capture on or off."""
    cfg = workdir / "insource.toml"
    no_capture = "" if capture else "\n[capture]\nenabled = false\n"
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
{no_capture}"""
    )
    return cfg


def create_keys(cfg: Path, workdir: Path, src: Path | None) -> tuple[str, str]:
    """(a key with a budget and an RPM limit, a key with neither)."""
    limited = ["--budget-usd", "1000", "--rpm", "100000000"]
    created = json.loads(
        cli(["keys", "create", "--tenant", "bench", *limited, "--json", "--config", str(cfg)], workdir, src)
    )
    plain = json.loads(cli(["keys", "create", "--tenant", "bench", "--json", "--config", str(cfg)], workdir, src))
    return created["key"], plain["key"]


def _start_upstream(env: Env, chunks: int, latency_ms: float = 0.0) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(UPSTREAM), "--port", str(env.upstream_port), "--chunks", str(chunks)]
    up = subprocess.Popen(
        [*cmd, "--latency-ms", str(latency_ms)],
        cwd=env.workdir,
        stdout=subprocess.DEVNULL,
        stderr=env.log("upstream.log"),
    )
    env.procs.append(("upstream", up))
    wait_http(f"http://127.0.0.1:{env.upstream_port}/healthz", 20, up)
    return up


def _start_gateway(
    env: Env, cfg: Path, src: Path | None, serve_args: tuple[str, ...], extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    code = TRACED_CODE if (extra_env or {}).get("INSOURCE_BENCH_TRACE") else ""
    serve = ["serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(env.gateway_port), *serve_args]
    gw = subprocess.Popen(
        [sys.executable, "-c", code + CLI_CODE, *serve, "--workers", str(env.workers)],
        cwd=env.workdir,
        stdout=env.log("gateway.out"),
        stderr=env.log("gateway.log"),
        env={**child_env(src), **(extra_env or {})},
    )
    env.procs.append(("gateway", gw))
    env.gateway = gw
    wait_http(f"http://127.0.0.1:{env.gateway_port}/healthz", 60, gw)
    return gw


def start_env(
    workers: int,
    chunks: int,
    pin_cpus: bool,
    *,
    capture: bool = True,
    src: Path | None = None,
    serve_args: tuple[str, ...] = (),
    latency_ms: float = 0.0,
    extra_env: dict[str, str] | None = None,
) -> Env:
    workdir = Path(tempfile.mkdtemp(prefix="insource-bench-"))
    up_port, gw_port = free_port(), free_port()
    cfg = write_config(workdir, up_port, capture)
    key, plain_key = create_keys(cfg, workdir, src)
    env = Env(workdir, up_port, gw_port, key, plain_key, workers)
    try:
        up = _start_upstream(env, chunks, latency_ms)
        gw = _start_gateway(env, cfg, src, serve_args, extra_env)
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
