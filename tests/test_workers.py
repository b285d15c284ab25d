"""Several workers: keys, revocations and spend agree across processes."""

from __future__ import annotations

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
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("workers")
    handle = run_server(FakeUpstream())
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
