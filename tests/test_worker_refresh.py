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


def _count_reloads(state: WorkerState, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    reloads: list[float] = []
    real = state._reload

    def counted() -> tuple[object, object, object]:
        reloads.append(1.0)
        return real()

    monkeypatch.setattr(state, "_reload", counted)
    return reloads


def _idle_then_a_new_key(state: WorkerState, reloads: list[float]) -> tuple[int, int]:
    """(reloads in 0.5 s with nothing committed, keys seen once a key is created after that)."""

    async def run() -> tuple[int, int]:
        loop = asyncio.create_task(state._refresh_loop())
        try:
            await asyncio.sleep(0.5)  # 25 looks at REFRESH_S = 0.02
            idle = len(reloads)
            create_key(state.store, state.secret, "acme")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if state.keys.by_hash:
                    break
            return idle, len(state.keys.by_hash)
        finally:
            loop.cancel()
            state.writer.close()

    return asyncio.run(run())


def test_an_idle_worker_reads_the_store_again_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code re-read keys, assignments and routes at every look (twice a second, idle or not)."""
    state = _state(tmp_path)
    monkeypatch.setattr(worker_state, "REFRESH_S", 0.02)
    idle, keys = _idle_then_a_new_key(state, _count_reloads(state, monkeypatch))
    assert idle <= 2, f"{idle} reloads in 0.5 s with nothing committed"  # the first, maybe a start-up write
    assert keys == 1  # a commit from elsewhere is still picked up at the next look


def test_a_store_that_cannot_tell_is_read_at_every_look(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL has no `data_version`: its workers re-read at every look, as before."""
    state = _state(tmp_path)
    monkeypatch.setattr(worker_state, "REFRESH_S", 0.02)
    monkeypatch.setattr(state.store, "data_version", lambda: None)
    idle, keys = _idle_then_a_new_key(state, _count_reloads(state, monkeypatch))
    assert idle >= 10 and keys == 1
