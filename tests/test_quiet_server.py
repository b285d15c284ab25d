"""An idle one-worker gateway sleeps: uvicorn's heartbeat once a second instead of ten times (`server/runner.py`)
and no reload of keys and routes while the store is unchanged (`Store.data_version`). A stop signal still
stops it at once, and the `date` header is still right.

Measured through a real `insource serve`: the voluntary context switches of its main thread (the event loop)
over 3 idle seconds — each one a wake-up. Old code: 44 (ten uvicorn ticks and two reloads a second); now ~9.
"""

from __future__ import annotations

import signal
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from tests.conftest import start_gateway, stop_gateway


def _wakeups(pid: int) -> int:
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def test_an_idle_gateway_sleeps_and_still_stops_at_once(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    gw = start_gateway(config)
    try:
        resp = httpx.get(gw.url + "/healthz", timeout=5)
        assert abs(parsedate_to_datetime(resp.headers["date"]).timestamp() - time.time()) < 3
        time.sleep(1.5)  # start-up writes and their reload are over
        before = _wakeups(gw.proc.pid)
        time.sleep(3)
        woke = _wakeups(gw.proc.pid) - before
        assert woke < 25, f"the idle event loop woke {woke} times in 3 s"
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(10) == 0  # the signal wakes the once-a-second heartbeat
    finally:
        stop_gateway(gw)
