"""Crash-safe metering: SIGKILL a real `insource serve` (a worker of two, 20 times at random moments, and the whole
server) under load from the official openai SDK (≥ 200 requests in flight, half of them streamed), restart it,
and find exactly one usage record for every request whose client received a complete answer.

A complete answer: a non-streamed response parsed whole, or a stream whose `data: [DONE]` arrived (what the SDK
treats as the end; it drains and ignores anything after it). The client keeps each such request's `X-Request-Id`
(the gateway makes it; it is the usage record's request id) and the tokens it was told, and the record must say
the same. The kill moments are drawn from a seeded RNG: `INSOURCE_KILL_SEED=<n>` replays a run, and a failure
prints the seed and every kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import orjson
import psutil
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, start_gateway, stop_gateway
from tests.test_durability import _config, locked

from insource.config import load_config
from insource.store import open_store
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

ENV = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY}
CLIENTS = 208  # concurrent clients, each with one request in flight at a time
KILLS = 20


@dataclass
class Load:
    """What the clients saw: per complete answer, (stream, prompt tokens, completion tokens) by request id."""

    answered: dict[str, tuple[bool, int, int]] = field(default_factory=dict)
    in_flight: int = 0
    peak: int = 0
    streams_done: int = 0


@dataclass
class Run:
    seed: int
    kills: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"INSOURCE_KILL_SEED={self.seed}; kills: " + "; ".join(self.kills)


# a stream read through `with_streaming_response` raises the HTTP client's own error when its body is cut: the
# openai SDK's client is httpx, or its fork `httpx2` in newer releases
HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError,)
with contextlib.suppress(ImportError):
    import httpx2

    HTTP_ERRORS += (httpx2.HTTPError,)


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[ServerHandle]:
    fake = FakeUpstream()
    fake.delay_s = 0.02  # 20 ms, as a fast real upstream
    handle = run_server(fake)
    yield handle
    handle.stop()


@pytest.fixture()
def run() -> Run:
    seed = int(os.environ.get("INSOURCE_KILL_SEED") or random.SystemRandom().randrange(2**32))
    return Run(seed)


async def _streamed(client: openai.AsyncOpenAI, messages: list[dict[str, str]], load: Load) -> None:
    """A stream read line by line: complete when `data: [DONE]` arrived, whatever happens to the connection after."""
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        rid = resp.headers["x-request-id"]
        usage = None
        async for line in resp.iter_lines():
            if line == "data: [DONE]":
                assert usage is not None, "the stream ended without its usage chunk"
                load.answered[rid] = (True, usage["prompt_tokens"], usage["completion_tokens"])
                load.streams_done += 1
                return
            if line.startswith("data: "):
                usage = orjson.loads(line[6:]).get("usage") or usage


async def _one(client: openai.AsyncOpenAI, i: int, load: Load) -> None:
    messages = [{"role": "user", "content": f"crash test {i} " + "word " * (i % 7)}]
    load.in_flight += 1
    load.peak = max(load.peak, load.in_flight)
    try:
        if i % 2:
            await _streamed(client, messages, load)
            return
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        usage = raw.parse().usage
        assert usage is not None
        load.answered[raw.headers["x-request-id"]] = (False, usage.prompt_tokens, usage.completion_tokens)
    finally:
        load.in_flight -= 1


async def _load(url: str, key: str, load: Load) -> None:
    """CLIENTS concurrent clients, half streaming, until cancelled (killed workers fail some requests)."""
    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=20)
    counter = iter(range(10**9))

    async def worker() -> None:
        while True:
            try:
                await _one(client, next(counter), load)
            except (openai.APIError, *HTTP_ERRORS, OSError, ValueError):  # killed under the request (a cut
                # event does not parse, a stream's body ends early): not answered
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
        time.sleep(0.3)
        kill()


def _workers(gw: Gateway) -> list[psutil.Process]:
    """The live worker processes (a killed one is a zombie until uvicorn reaps it)."""
    found = []
    for proc in psutil.Process(gw.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


async def _a_worker(gw: Gateway) -> list[psutil.Process]:
    deadline = time.monotonic() + 60
    while not (workers := await asyncio.to_thread(_workers, gw)):  # both are being restarted
        assert time.monotonic() < deadline, "no worker was started again within 60 s"
        await asyncio.sleep(0.1)
    return workers


async def _answering(load: Load, count: int, clients: asyncio.Task[None], run: Run | str) -> None:
    """Until the gateway answered `count` requests: each kill lands while it answers, not while it restarts.
    Fails (never hangs) when the clients stopped or nothing was answered for a minute."""
    deadline = time.monotonic() + 60
    while len(load.answered) < count:
        if clients.done():
            clients.result()  # the clients' error, if they died of one
            raise AssertionError(f"the clients stopped ({run})")
        assert time.monotonic() < deadline, f"nothing answered for 60 s: {load.in_flight} in flight ({run})"
        await asyncio.sleep(0.05)


async def _kill_workers(gw: Gateway, key: str, load: Load, run: Run) -> None:
    """SIGKILL one of the workers at KILLS random moments under load (uvicorn starts a new one each time)."""
    rng = random.Random(run.seed)
    task = asyncio.create_task(_load(gw.base_url, key, load))
    t0 = time.monotonic()
    try:
        await asyncio.sleep(1.0)  # the clients are all in flight
        for n in range(KILLS):
            delay = rng.uniform(0.05, 1.0)
            stalled = rng.random() < 0.4
            await asyncio.sleep(delay)
            await _answering(load, len(load.answered) + 10, task, run)
            victim = rng.choice(await _a_worker(gw))
            run.kills.append(
                f"#{n} +{delay:.2f}s{' store held' if stalled else ''} at {time.monotonic() - t0:.1f}s: pid "
                f"{victim.pid} up {time.time() - victim.create_time():.1f}s, {load.in_flight} in flight, "
                f"{len(load.answered)} answered"
            )
            if stalled:
                await asyncio.to_thread(_stall_then, gw, victim.kill)
            else:
                victim.kill()
        await _a_worker(gw)
        await asyncio.sleep(0.5)  # the last kill's successor answers too
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


def _check(config: Path, load: Load, run: Run | str, *, left_in_journal: bool) -> None:
    """Restart once more (the journals of the killed workers are replayed), stop, and count. `left_in_journal`:
    the last kill left records only in a journal (with 2 workers, the survivors may have adopted them already)."""
    gw = start_gateway(config, ENV)
    try:
        replayed = _wait_replayed(gw)
    finally:
        stop_gateway(gw)
    assert replayed > 0 or not left_in_journal, run
    store = open_store(load_config(config))
    try:
        rows = store.query("SELECT request_id, status, stream, prompt_tokens, completion_tokens FROM usage")
    finally:
        store.close()
    per_request: dict[str, list[tuple[bool, int, int]]] = {}
    for row in rows:
        if row["status"] == 200:
            seen = (bool(row["stream"]), row["prompt_tokens"], row["completion_tokens"])
            per_request.setdefault(row["request_id"], []).append(seen)
    missing = [rid for rid in load.answered if rid not in per_request]
    assert not missing, f"{len(missing)} of {len(load.answered)} answered requests have no usage record ({run})"
    twice = {rid: n for rid, n in per_request.items() if len(n) > 1}
    assert not twice, f"{len(twice)} requests have more than one usage record ({run})"
    wrong = {rid: (seen, per_request[rid][0]) for rid, seen in load.answered.items() if per_request[rid][0] != seen}
    assert not wrong, f"records that differ from what the client was told: {list(wrong.items())[:3]} ({run})"
    _captures_lost_loudly(config, run)


def _captures_lost_loudly(config: Path, run: Run | str) -> None:
    """Captures are not journaled: one a killed worker never wrote must be counted (and logged), never lost
    silently. Every answered record has its capture, or is among those the replays logged as lost."""
    store = open_store(load_config(config))
    try:
        row = store.query_one(
            "SELECT COUNT(*) AS n FROM usage u WHERE u.status = 200 AND NOT EXISTS "
            "(SELECT 1 FROM captures c WHERE c.id = u.id)"
        )
    finally:
        store.close()
    missing = int(row["n"]) if row else 0
    logged = sum(
        int(m.group(1))
        for log in config.parent.glob("gateway-*.log")
        for m in re.finditer(r"writer: (\d+) captures of a killed worker were never written", log.read_text())
    )
    assert missing <= logged, f"{missing} answered requests have no capture, {logged} counted as lost ({run})"


def test_sigkill_of_a_worker_at_20_random_moments_loses_no_answered_request(
    slow_upstream: ServerHandle, tmp_path: Path, run: Run
) -> None:
    config = _config(tmp_path / "two", slow_upstream.url)
    gw = start_gateway(config, ENV, workers=2)
    load = Load()
    try:
        key = gw.key("crash")["key"]
        asyncio.run(_kill_workers(gw, key, load, run))
    finally:
        _kill_all(gw)  # and the whole server at the end, while it may still hold records
    assert len(run.kills) == KILLS, run
    assert load.peak >= 200, f"only {load.peak} requests were ever in flight together"
    assert load.streams_done > 100 and len(load.answered) - load.streams_done > 100, run
    _check(config, load, run, left_in_journal=False)


async def _load_for_then_kill(gw: Gateway, key: str, load: Load, seconds: float) -> None:
    task = asyncio.create_task(_load(gw.base_url, key, load))
    await _answering(load, len(load.answered) + 20, task, "the whole server's kill")  # real load first
    await asyncio.sleep(seconds)
    await asyncio.to_thread(_stall_then, gw, lambda: _kill_all(gw))  # no graceful anything
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_sigkill_of_the_whole_server_loses_no_answered_request(
    slow_upstream: ServerHandle, tmp_path: Path, run: Run
) -> None:
    """One worker: the killed process is the server, and the records are replayed when it is started again."""
    config = _config(tmp_path / "one", slow_upstream.url)
    load = Load()
    key = ""
    rng = random.Random(run.seed)
    for n in range(2):
        gw = start_gateway(config, ENV)
        key = key or gw.key("crash")["key"]
        seconds = rng.uniform(0.0, 1.5)
        run.kills.append(f"#{n} {seconds:.2f}s after answers")
        asyncio.run(_load_for_then_kill(gw, key, load, seconds))
    _check(config, load, run, left_in_journal=True)
