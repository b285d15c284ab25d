"""Crash-safe metering: SIGKILL a real `insource serve` (1 and 2 workers) right after answers, under concurrent
load from the official openai SDK, restart it, and find exactly one usage record for every answered request.

The client keeps the `X-Request-Id` of every request whose complete answer it received (a streamed one only once
its stream ended); the gateway makes that id, and it is the usage record's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, start_gateway, stop_gateway
from tests.test_durability import _config, locked

from insource.config import load_config
from insource.store import open_store
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

ENV = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY}
CLIENTS = 200  # requests in flight


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[ServerHandle]:
    fake = FakeUpstream()
    fake.delay_s = 0.02  # 20 ms, as a fast real upstream
    handle = run_server(fake)
    yield handle
    handle.stop()


async def _one(client: openai.AsyncOpenAI, i: int, answered: list[str]) -> None:
    messages = [{"role": "user", "content": f"crash test {i}"}]
    if i % 2:
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
        ) as resp:
            rid = resp.headers["x-request-id"]
            async for _chunk in await resp.parse():
                pass
    else:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        raw.parse()
        rid = raw.headers["x-request-id"]
    answered.append(rid)  # the whole answer arrived


async def _load(url: str, key: str, seconds: float, answered: list[str]) -> None:
    """CLIENTS concurrent clients, half streaming, for `seconds` (or until the gateway dies under them)."""
    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10)
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                await _one(client, next(counter), answered)
            except (openai.APIError, OSError):  # killed under the request: not answered
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    finally:
        await client.close()


def _kill_all(gw: Gateway) -> None:
    procs = [psutil.Process(gw.proc.pid), *psutil.Process(gw.proc.pid).children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    psutil.wait_procs(procs, timeout=10)


def _stall_then(gw: Gateway, kill: Callable[[], None]) -> None:
    """Kill while the store is held by another process (a backup, a long report) for a moment shorter than the
    writer's stall guard: the records of the answers of that moment are in memory, and on disk only in the
    journal. (Without a lock the writer commits within milliseconds at this load; at a real gateway's load the
    records of the last batch are in memory at any moment.)"""
    with locked(gw.config.parent / "insource.db"):
        time.sleep(0.4)
        kill()


def _workers(gw: Gateway) -> list[psutil.Process]:
    """The live worker processes (a killed one is a zombie until uvicorn reaps it)."""
    found = []
    for proc in psutil.Process(gw.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


async def _load_and_kill(gw: Gateway, key: str, answered: list[str], kills: int) -> None:
    """Load the gateway and SIGKILL one of its workers at random moments (uvicorn starts a new one)."""
    load = asyncio.create_task(_load(gw.base_url, key, 1e9, answered))
    rng = random.Random(15)
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            workers = await asyncio.to_thread(_workers, gw)
            while not workers:  # both are being restarted
                await asyncio.sleep(0.2)
                workers = await asyncio.to_thread(_workers, gw)
            victim = rng.choice(workers)
            if rng.random() < 0.5:
                await asyncio.to_thread(_stall_then, gw, victim.kill)
            else:  # a kill at a random moment of plain load
                victim.kill()
            await asyncio.sleep(rng.uniform(1.0, 2.0))  # a new worker is started; the survivor adopts
    finally:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load


def _wait_replayed(gw: Gateway) -> int:
    """`insource_writer_records{state="journal_replayed"}` from /metrics, once the start-up replay counted some."""
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(gw.url + "/metrics").text
        line = next(ln for ln in text.splitlines() if 'state="journal_replayed"' in ln)
        replayed = int(line.rsplit(" ", 1)[1])
        if replayed or time.monotonic() > deadline:
            return replayed
        time.sleep(0.1)


def _check(config: Path, answered: list[str], *, left_in_journal: bool) -> None:
    """Restart once more (the journals of the killed workers are replayed), stop, and count. `left_in_journal`:
    the last kill left records only in a journal (with 2 workers, the survivors may have adopted them already)."""
    gw = start_gateway(config, ENV)
    try:
        replayed = _wait_replayed(gw)
    finally:
        stop_gateway(gw)
    assert replayed > 0 or not left_in_journal
    store = open_store(load_config(config))
    try:
        rows = store.query("SELECT id, request_id FROM usage WHERE status = 200")
    finally:
        store.close()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    per_request: dict[str, int] = {}
    for row in rows:
        per_request[row["request_id"]] = per_request.get(row["request_id"], 0) + 1
    missing = [rid for rid in answered if rid not in per_request]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no usage record"
    twice = [rid for rid in answered if per_request[rid] != 1]
    assert not twice, f"{len(twice)} answered requests have more than one usage record"


def test_sigkill_of_the_whole_server_loses_no_answered_request(slow_upstream: ServerHandle, tmp_path: Path) -> None:
    config = _config(tmp_path / "one", slow_upstream.url)
    answered: list[str] = []
    key = ""
    rng = random.Random(1)
    for _ in range(4):
        gw = start_gateway(config, ENV)
        key = key or gw.key("crash")["key"]
        before = len(answered)
        asyncio.run(_load_for_then_kill(gw, key, answered, rng.uniform(1.5, 3.0)))
        assert len(answered) > before  # real load was answered before each kill
    _check(config, answered, left_in_journal=True)


async def _load_for_then_kill(gw: Gateway, key: str, answered: list[str], seconds: float) -> None:
    load = asyncio.create_task(_load(gw.base_url, key, 1e9, answered))
    await asyncio.sleep(seconds)
    await asyncio.to_thread(_stall_then, gw, lambda: _kill_all(gw))  # no graceful anything
    load.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await load


def test_sigkill_of_workers_loses_no_answered_request(slow_upstream: ServerHandle, tmp_path: Path) -> None:
    config = _config(tmp_path / "two", slow_upstream.url)
    gw = start_gateway(config, ENV, workers=2)
    try:
        key = gw.key("crash")["key"]
        answered: list[str] = []
        asyncio.run(_load_and_kill(gw, key, answered, kills=12))
        assert len(answered) > 200
    finally:
        _kill_all(gw)  # and the whole server at the end, while it may still hold records
    _check(config, answered, left_in_journal=False)
