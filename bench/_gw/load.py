"""Load generation: ``wrk`` with a Lua script, and the raw-socket probe client (TTFT, whole-stream latency).

The probe runs as a separate process: ``python bench/gateway_bench.py --_probe SPEC_JSON`` calls `probe_main`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import CLIENT_CPU, ENTRY, PATH

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
    path: str = PATH,
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
        f"http://127.0.0.1:{port}{path}",
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
        cmd = [sys.executable, str(ENTRY), "--_probe", json.dumps({**spec, "out": str(result)})]
        if pin_cpus:
            cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
        out = subprocess.run(cmd, capture_output=True, timeout=spec["seconds"] + 60, check=False)
        if out.returncode != 0 or not result.exists():
            raise RuntimeError(f"probe failed ({out.returncode}): {out.stderr.decode()[-2000:]}")
        samples: list[list[tuple[float, float]]] = json.loads(result.read_text())["samples"]
        return samples
