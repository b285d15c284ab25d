"""A gateway worker reloads keys, template assignments and routes from the store in one loop; a kind whose reload
fails keeps its last good copy and does not hold back the others."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import insource.service.worker_state as worker_state
from insource.config import load_config
from insource.service.keys import create_key
from insource.service.worker_state import WorkerState


def _state(tmp_path: Path) -> WorkerState:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    return WorkerState(load_config(config))


def test_a_failing_route_reload_does_not_stop_new_keys_from_arriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state(tmp_path)
    monkeypatch.setattr(worker_state, "REFRESH_S", 0.02)
    before = dict(state.router.policies)

    def broken() -> dict[str, object]:
        raise RuntimeError("the routes table is unreadable")

    monkeypatch.setattr(state.router, "load", broken)

    async def run() -> int:
        loop = asyncio.create_task(state._refresh_loop())
        try:
            create_key(state.store, state.secret, "acme")  # as `insource keys create` does, from another process
            for _ in range(100):
                await asyncio.sleep(0.02)
                if state.keys.by_hash:
                    break
            assert not loop.done()  # the loop survives the failing kind
            return len(state.keys.by_hash)
        finally:
            loop.cancel()
            state.writer.close()

    with caplog.at_level(logging.ERROR, logger="insource.gateway"):
        assert asyncio.run(run()) == 1
    assert state.router.policies == before  # the last good routes kept
    assert any(r.getMessage() == "route refresh failed" for r in caplog.records)


def test_reload_returns_each_kind_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path)
    try:
        create_key(state.store, state.secret, "acme")
        keys, assigned, routes = state._reload()
        assert keys is not None and len(keys) == 1 and assigned is not None and routes == {}

        def broken() -> dict[str, object]:
            raise OSError("disk gone")

        monkeypatch.setattr(state.keys, "load_all", broken)
        keys, assigned, routes = state._reload()
        assert keys is None and assigned is not None and routes == {}
    finally:
        state.writer.close()
