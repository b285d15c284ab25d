"""The model registry: versions count up, never overwrite, atomic; corrupt entries listed, not raised."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from insource.errors import ModelNotFound, NotReady
from insource.registry.entries import list_models, register, resolve


def _builder(payload: str) -> Any:
    def build(folder: Path) -> dict[str, Any]:
        (folder / "weights.bin").write_text(payload)
        return {
            "student": "classifier",
            "labels": ["a", "b"],
            "metrics": {"val_agreement": 0.9},
            "created_at": "2026-01-01T00:00:00+00:00",
        }

    return build


def test_versions_count_up_and_never_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "models"
    n1, p1 = register(root, "intent", _builder("one"))
    n2, p2 = register(root, "intent", _builder("two"))
    n3, _ = register(root, "other", _builder("x"))
    assert (n1, n2, n3) == ("intent@v1", "intent@v2", "other@v1")
    assert (p1 / "weights.bin").read_text() == "one" and (p2 / "weights.bin").read_text() == "two"
    info = json.loads((p2 / "model.json").read_text())
    assert info["name"] == "intent@v2" and info["version"] == 2 and info["task"] == "intent"
    assert resolve(root, "intent@latest") == p2 and resolve(root, "intent") == p2 and resolve(root, "intent@v1") == p1
    rows = list_models(root)
    assert [r["name"] for r in rows] == ["intent@v1", "intent@v2", "other@v1"]
    assert {"name", "task", "version", "student", "created_at", "metrics"} <= set(rows[0])
    assert not [p for p in root.iterdir() if p.name.startswith(".staging")]


def test_a_failing_build_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "models"

    def broken(folder: Path) -> dict[str, Any]:
        (folder / "half.bin").write_text("partial")
        raise NotReady("boom")

    with pytest.raises(NotReady):
        register(root, "intent", broken)
    assert list(root.iterdir()) == []
    assert register(root, "intent", _builder("ok"))[0] == "intent@v1"


def test_concurrent_registrations_take_distinct_versions(tmp_path: Path) -> None:
    root = tmp_path / "models"
    names: list[str] = []
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        def build(folder: Path) -> dict[str, Any]:
            barrier.wait()  # every build finishes together, then all race for the same next version
            return _builder(str(i))(folder)

        names.append(register(root, "intent", build)[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names) == [f"intent@v{i}" for i in range(1, 7)]
    payloads = {(root / n / "weights.bin").read_text() for n in names}
    assert payloads == {str(i) for i in range(6)}  # nobody's weights were overwritten


def test_corrupt_entries_are_listed_with_an_error(tmp_path: Path) -> None:
    root = tmp_path / "models"
    register(root, "intent", _builder("ok"))
    (root / "intent@v2").mkdir()
    (root / "intent@v2" / "model.json").write_text("{not json")
    (root / "intent@v3").mkdir()  # no model.json at all
    rows = {r["name"]: r for r in list_models(root)}
    assert "error" not in rows["intent@v1"]
    assert "unreadable" in rows["intent@v2"]["error"] and "missing" in rows["intent@v3"]["error"]
    assert [rows[n]["status"] for n in ("intent@v1", "intent@v2", "intent@v3")] == ["ok", "damaged", "damaged"]
    assert resolve(root, "intent@latest").name == "intent@v1"  # latest skips corrupt versions
    from insource.registry.entries import load_student

    with pytest.raises(NotReady, match="corrupt registry entry intent@v2"):
        load_student(root, "intent@v2")


def test_resolve_rejects_bad_names(tmp_path: Path) -> None:
    root = tmp_path / "models"
    register(root, "intent", _builder("ok"))
    for bad in ("intent@v9", "../etc@v1", "intent@vx", "nothing@latest", "@v1"):
        with pytest.raises(ModelNotFound):
            resolve(root, bad)
    with pytest.raises(NotReady):
        register(root, "../escape", _builder("x"))
