"""The demo's steps that are ordinary insource commands, run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from insource.errors import InsourceError


class StepFailed(InsourceError):
    status = 500
    type = "demo_error"


def cli_json(config: Path, *args: str, timeout: float = 900, ok: tuple[int, ...] = (0,)) -> Any:
    """Run `insource ARGS --config CONFIG --json`; its progress (stderr) goes to the terminal. Exit codes in
    `ok` are answers, not failures (e.g. 3: `eval --target-agreement` found no threshold)."""
    cmd = [sys.executable, "-m", "insource", *args, "--config", str(config), "--json"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, timeout=timeout, env=os.environ.copy())
    if proc.returncode not in ok:
        raise StepFailed(f"`insource {' '.join(args)}` failed (exit {proc.returncode}); see the messages above")
    try:
        return orjson.loads(proc.stdout)
    except orjson.JSONDecodeError:
        raise StepFailed(f"`insource {' '.join(args)}` printed no JSON") from None


def start_gateway(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "insource", "serve", "--config", str(config), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StepFailed(f"the gateway exited at start; its log: {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    proc.kill()
    raise StepFailed(f"the gateway did not start within 60 s; its log: {log}")


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
