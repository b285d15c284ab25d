"""Several workers: keys, revocations and spend agree across processes."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import Gateway, start_gateway, stop_gateway

from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import run_server


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("workers")
    handle = run_server(upstream)
    config = folder / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[providers.up]\nkind = "openai"\nbase_url = "{handle.url}/v1"\n'
        '[models."gpt-4o-mini"]\ntargets = ["up:gpt-4o-mini"]\n'
    )
    gw = start_gateway(config, workers=2)
    yield gw
    stop_gateway(gw)
    handle.stop()
    shutil.rmtree(folder, ignore_errors=True)


def burst(gw: Gateway, key: str, n: int = 24) -> list[int]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    codes = []
    for _ in range(n):  # a fresh connection each time, so the kernel spreads them over the workers
        with httpx.Client() as c:
            codes.append(
                c.post(
                    gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                ).status_code
            )
    return codes


def test_key_created_and_revoked_agree_on_every_worker(two_workers: Gateway) -> None:
    created = two_workers.key("multi")
    assert set(burst(two_workers, created["key"])) == {200}
    two_workers.cli("keys", "revoke", created["id"])
    time.sleep(1.0)
    assert set(burst(two_workers, created["key"])) == {401}
    rows = two_workers.usage_rows("key_id=?", (created["id"],), wait_for=24)
    assert len(rows) == 24  # refused requests without a valid key are not recorded


async def fire(gw: Gateway, key: str, n: int) -> list[int]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}

    async def one() -> int:
        async with httpx.AsyncClient(timeout=60) as c:  # one connection each: spread over both workers
            resp = await c.post(
                gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return resp.status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


def test_budget_holds_across_workers_without_redis(two_workers: Gateway, upstream: FakeUpstream) -> None:
    probe = two_workers.key("probe")
    asyncio.run(fire(two_workers, probe["key"], 1))
    one = two_workers.usage_rows("key_id=?", (probe["id"],), wait_for=1)[0]["cost_usd"]
    upstream.delay_s = 0.2
    key = two_workers.key("budget-no-redis", budget_usd=one * 10)
    try:
        codes = asyncio.run(fire(two_workers, key["key"], 120))
    finally:
        upstream.delay_s = 0.0
    assert 1 <= codes.count(200) <= 10 and set(codes) <= {200, 429}
    rows = two_workers.usage_rows("key_id=?", (key["id"],), wait_for=120)
    assert sum(r["cost_usd"] for r in rows) <= one * 10 + 1e-12


def test_rpm_shared_across_workers_without_redis(two_workers: Gateway) -> None:
    key = two_workers.key("rpm-no-redis", rpm=5)
    codes = asyncio.run(fire(two_workers, key["key"], 20))
    assert codes.count(200) == 5 and codes.count(429) == 15
