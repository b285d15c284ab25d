"""Limits shared across workers through a real Redis server: the budget holds over two processes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import Gateway, free_port, start_gateway, stop_gateway

from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import run_server

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(REDIS),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="module")
def shared(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeUpstream]]:
    folder: Path = tmp_path_factory.mktemp("redis-gw")
    fake = FakeUpstream()
    handle = run_server(fake)
    config = folder / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[server]\nredis_url = "{redis_url}"\n'
        f'[providers.up]\nkind = "openai"\nbase_url = "{handle.url}/v1"\n'
        '[models."gpt-4o-mini"]\ntargets = ["up:gpt-4o-mini"]\n'
    )
    gw = start_gateway(config, workers=2)
    yield gw, fake
    stop_gateway(gw)
    handle.stop()


async def fire(gw: Gateway, key: str, n: int) -> list[int]:
    async def one() -> int:
        async with httpx.AsyncClient(timeout=60) as c:  # one connection each: spread over both workers
            return (
                await c.post(gw.base_url + "/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
            ).status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


def test_budget_holds_across_two_workers(shared: tuple[Gateway, FakeUpstream]) -> None:
    gw, fake = shared
    probe = gw.key("probe")
    asyncio.run(fire(gw, probe["key"], 1))
    one = gw.usage_rows("key_id=?", (probe["id"],), wait_for=1)[0]["cost_usd"]
    fake.delay_s = 0.2
    key = gw.key("shared-budget", budget_usd=one * 10)
    codes = asyncio.run(fire(gw, key["key"], 120))
    fake.delay_s = 0.0
    assert 1 <= codes.count(200) <= 10 and set(codes) <= {200, 429}
    rows = gw.usage_rows("key_id=?", (key["id"],), wait_for=120)
    assert sum(r["cost_usd"] for r in rows) <= one * 10 + 1e-12


def test_rpm_shared_across_workers(shared: tuple[Gateway, FakeUpstream]) -> None:
    gw, _ = shared
    key = gw.key("shared-rpm", rpm=5)
    codes = asyncio.run(fire(gw, key["key"], 20))
    assert codes.count(200) <= 5 and codes.count(429) >= 15


def test_budget_refusal_names_the_key(shared: tuple[Gateway, FakeUpstream]) -> None:
    gw, _ = shared
    key = gw.key("tiny-budget", budget_usd=0.000000001)
    resp = httpx.post(gw.base_url + "/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key['key']}"})
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "budget_exceeded"
    assert f"key {key['id']}" in resp.json()["error"]["message"] and resp.headers["x-request-id"]
