"""A damaged registry stays contained and is reported cleanly; version numbers are never reused.

Fast tests use stand-in weights; the end-to-end tests distill real (small) students, as tests/test_distill.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import make_home
from tests.test_distill import DATA, banking_subset, cli
from tests.test_eval_metrics import _result as chart_result
from tests.test_registry import _builder

from insource.capture.dataset_read import write_dataset
from insource.config import load_config
from insource.distill import export
from insource.errors import ModelNotFound, NotReady
from insource.registry.entries import list_models, load_student, register, resolve, write_json_atomic

needs_banking77 = pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason="Banking77 not found in ../shared/data")
WEIGHT_FILES = ("encoder.onnx", "tokenizer.json", "encoder.json")


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- version numbers and names ----


def test_a_deleted_latest_version_number_is_never_reused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    register(root, "intent", _builder("one"))
    _, p2 = register(root, "intent", _builder("two"))
    shutil.rmtree(p2)
    assert register(root, "intent", _builder("three"))[0] == "intent@v3"
    assert register(root, "other", _builder("x"))[0] == "other@v1"  # numbers are per task


def test_a_stray_file_named_like_a_version_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "intent@v1").write_text("not a model")
    name, path = register(root, "intent", _builder("ok"))
    assert name == "intent@v2" and (path / "weights.bin").read_text() == "ok"
    assert [r["name"] for r in list_models(root)] == ["intent@v2"]
    assert resolve(root, "intent@latest") == path
    with pytest.raises(ModelNotFound, match="not registered"):
        resolve(root, "intent@v1")


def test_malformed_model_names_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _, path = register(root, "intent", _builder("ok"))
    assert resolve(root, "intent") == path and resolve(root, "intent@latest") == path
    for bad in ("intent@", "intent@v", "intent@v1x", "intent@@v1", "intent@LATEST"):
        with pytest.raises(ModelNotFound, match="invalid model name"):
            resolve(root, bad)
    config = tmp_path / "insource.toml"
    config.write_text(f'[registry]\npath = "{root}"\n')
    res = cli("models", "show", "intent@", "--config", str(config))
    assert res.exit_code == 2 and "invalid model name 'intent@'" in res.stderr


# ---- cheap damage detection ----


def test_missing_empty_or_truncated_weights_are_listed_as_damaged(tmp_path: Path) -> None:
    root = tmp_path / "models"
    register(root, "intent", _builder("one"))
    _, p2 = register(root, "intent", _builder("two"))
    assert json.loads((p2 / "model.json").read_text())["files"] == {"weights.bin": 3}
    assert [r["status"] for r in list_models(root)] == ["ok", "ok"]
    for damage, needle in (
        (lambda p: p.unlink(), "weights.bin (a weight file) is missing"),
        (lambda p: p.write_text(""), "weights.bin (a weight file) is empty"),
        (lambda p: p.write_text("tw"), "weights.bin (a weight file) has 2 bytes, 3 were registered"),
    ):
        (p2 / "weights.bin").write_text("two")
        damage(p2 / "weights.bin")
        rows = {r["name"]: r for r in list_models(root)}
        assert rows["intent@v1"]["status"] == "ok" and "problem" not in rows["intent@v1"]
        assert rows["intent@v2"]["status"] == "damaged"
        assert rows["intent@v2"]["problem"] == f"corrupt registry entry intent@v2: {needle}"
        assert resolve(root, "intent@latest").name == "intent@v1"  # latest skips the damaged version


def test_an_entry_without_a_file_record_is_checked_for_the_classifier_files(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "intent@v1"
    folder.mkdir(parents=True)
    info = {"name": "intent@v1", "task": "intent", "version": 1, "student": "classifier", "labels": ["a", "b"]}
    (folder / "model.json").write_text(json.dumps(info))
    for name in ("encoder.onnx", "tokenizer.json", "encoder.json", "head.npz"):
        (folder / name).write_text("x")
    assert list_models(tmp_path / "models")[0]["status"] == "ok"
    (folder / "tokenizer.json").unlink()
    (row,) = list_models(tmp_path / "models")
    assert row["status"] == "damaged" and "tokenizer.json (the tokenizer) is missing" in row["problem"]
    with pytest.raises(NotReady, match=r"entry intent@v1: tokenizer.json \(the tokenizer\) is missing"):
        load_student(tmp_path / "models", "intent@v1")


# ---- written files get ordinary permissions ----


def test_json_and_charts_are_written_with_ordinary_permissions(tmp_path: Path, umask_022: None) -> None:
    from insource.evals.chart import write_chart

    write_json_atomic(tmp_path / "eval.json", {"a": 1})
    assert _mode(tmp_path / "eval.json") == 0o644
    assert _mode(write_chart(chart_result(), tmp_path / "chart.png")) == 0o644
    os.umask(0o077)
    write_json_atomic(tmp_path / "private.json", {"a": 1})
    assert _mode(tmp_path / "private.json") == 0o600  # the umask still applies


# ---- the encoder cache rebuilds itself when damaged ----


@pytest.fixture()
def fake_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The base model and its export replaced by small stand-ins (no torch): returns the export calls."""
    src = tmp_path / "base"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "tokenizer.json").write_text('{"model": {}}')
    calls: list[Path] = []

    def fake(model_dir: Path, out_dir: Path) -> dict[str, Any]:
        calls.append(out_dir)
        (out_dir / "encoder.onnx").write_bytes(b"onnx graph " * 100)
        shutil.copyfile(model_dir / "tokenizer.json", out_dir / "tokenizer.json")
        return export.write_export_info(out_dir, {"runtime": "fake", "source": export.weights_hash(model_dir)})

    monkeypatch.setattr(export, "base_model_dir", lambda: src)
    monkeypatch.setattr(export, "export_encoder", fake)
    return calls


def test_a_damaged_encoder_cache_is_exported_again(
    tmp_path: Path, fake_export: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = export.cached_base_encoder(cache)
    assert export.cached_base_encoder(cache) == first and len(fake_export) == 1  # reused while intact
    with (first / "encoder.onnx").open("r+b") as fh:
        fh.truncate(100)
    messages: list[str] = []
    again = export.cached_base_encoder(cache, lambda m, **_: messages.append(m))
    assert again == first and len(fake_export) == 2
    assert export.cache_problem(again) is None and (again / "encoder.onnx").stat().st_size == 1100
    assert messages == ["exporting the damaged encoder cache again"]
    assert "is unusable (encoder.onnx does not match its checksum): exporting it again" in caplog.text
    assert [p.name for p in (cache / "encoders").iterdir()] == [first.name]  # nothing set aside is left
    (again / "tokenizer.json").unlink()
    export.cached_base_encoder(cache)
    assert len(fake_export) == 3 and export.cache_problem(first) is None


def test_an_encoder_cache_without_checksums_is_exported_again(tmp_path: Path, fake_export: list[Path]) -> None:
    cache = tmp_path / "cache"
    first = export.cached_base_encoder(cache)
    info = json.loads((first / "encoder.json").read_text())
    del info["sha256"]  # as written by an older insource, whose versions hard-linked these files
    (first / "encoder.json").write_text(json.dumps(info))
    assert "no checksums" in str(export.cache_problem(first))
    export.cached_base_encoder(cache)
    assert len(fake_export) == 2 and export.cache_problem(first) is None


# ---- auto: the winner is the task's latest version ----


def _small_dataset(folder: Path) -> Path:
    rows = [(f"please top up my card number {i}", "top_up") for i in range(15)]
    rows += [(f"where is my parcel {i}", "delivery") for i in range(15)]
    return write_dataset(folder, "intent", {"train": rows, "val": rows[:5] + rows[-5:], "test": rows[5:8]})


@pytest.mark.parametrize("winner", ["classifier", "classifier-strong"])
def test_auto_registers_the_winner_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, winner: str) -> None:
    from insource.distill import service

    def build(ds: Any, folder: Path, cfg: Any, student: str, step: Any, base_model: Any = None) -> dict[str, Any]:
        (folder / "weights.bin").write_text(student)
        return {"labels": ["delivery", "top_up"], "metrics": {"val_agreement": 0.9}}

    def scored(folder: Path, cache_root: Path, ds: Any, target: float) -> dict[str, Any]:
        student = json.loads((folder / "model.json").read_text())["student"]
        coverage = 0.8 if student == winner else 0.5
        return {"threshold": 0.9, "val_coverage_at_target": coverage, "val_agreement_at_threshold": 0.99}

    monkeypatch.setattr(service, "_build", build)
    monkeypatch.setattr(service, "val_at_target", scored)
    (tmp_path / "insource.toml").write_text('[registry]\npath = "models"\n')
    cfg = load_config(tmp_path / "insource.toml")
    out = service.distill(cfg, "intent", student="auto", dataset=_small_dataset(tmp_path / "ds"))
    root = cfg.registry_path()
    assert out["model"] == "intent@v2" and out["student"] == winner
    assert resolve(root, "intent@latest").name == "intent@v2"
    loser = next(c for c in out["candidates"] if c["student"] != winner)
    assert loser["model"] == "intent@v1" and [c["student"] for c in out["candidates"]] == list(service.AUTO_STUDENTS)
    info = json.loads((root / "intent@v2" / "model.json").read_text())
    assert info["name"] == "intent@v2" and info["version"] == 2 and info["student"] == winner
    assert [c["model"] for c in info["selected_over"]] == ["intent@v1"]
    assert (root / "intent@v2" / "weights.bin").read_text() == winner and (root / "intent@v1" / "card.md").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".staging")]


# ---- end to end on real students ----


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two distilled versions of `intent` (v1, v2) in a fresh registry."""
    if not (DATA / "train.csv").is_file():
        pytest.skip("Banking77 not found in ../shared/data")
    base = tmp_path_factory.mktemp("damage")
    encoders = tmp_path_factory.getbasetemp() / "insource-encoder-cache"
    export.cached_base_encoder(encoders)
    config = make_home(base / "home", encoders)
    dataset = banking_subset(base / "ds")
    for expected in ("intent@v1", "intent@v2"):
        res = cli("distill", "--task", "intent", "--dataset", str(dataset), "--config", str(config))
        assert res.exit_code == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] == expected
    return {"base": base, "config": config, "dataset": dataset, "registry": load_config(config).registry_path()}


def _clean_failure(res: Any, needle: str) -> None:
    assert res.exit_code == 2, res.stderr
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def _eval(config: Path, model: str, *extra: str) -> Any:
    return cli("eval", "--task", "intent", "--model", model, "--config", str(config), *extra)


@needs_banking77
def test_damage_to_one_version_stays_in_that_version(home: dict[str, Any]) -> None:
    registry = home["registry"]
    (cache,) = (registry / ".cache" / "encoders").iterdir()
    for name in WEIGHT_FILES:
        paths = [registry / "intent@v1" / name, registry / "intent@v2" / name, cache / name]
        inodes = {p.stat().st_ino for p in paths}
        assert len(inodes) == 3, name  # three separate files: no hard links between versions or the cache
    backup = shutil.copytree(registry / "intent@v2", home["base"] / "v2-backup")
    with (registry / "intent@v2" / "encoder.onnx").open("r+b") as fh:
        fh.truncate(100)
    try:
        assert export.cache_problem(cache) is None
        res = _eval(home["config"], "intent@v1", "--json")
        assert res.exit_code == 0, res.stderr
        rows = {r["name"]: r for r in list_models(registry)}
        assert rows["intent@v1"]["status"] == "ok" and rows["intent@v2"]["status"] == "damaged"
        assert "encoder.onnx (the encoder) has 100 bytes" in rows["intent@v2"]["problem"]
        _clean_failure(_eval(home["config"], "intent@v2"), "corrupt registry entry intent@v2: encoder.onnx")
        res = cli("models", "list", "--json", "--config", str(home["config"]))
        assert {r["name"]: r["status"] for r in json.loads(res.stdout)} == {"intent@v1": "ok", "intent@v2": "damaged"}
        res = cli("distill", "--task", "intent", "--dataset", str(home["dataset"]), "--config", str(home["config"]))
        assert res.exit_code == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] == "intent@v3"
        shutil.rmtree(registry / "intent@v3")
    finally:
        shutil.rmtree(registry / "intent@v2")
        shutil.copytree(backup, registry / "intent@v2")


@needs_banking77
@pytest.mark.parametrize(
    ("name", "damage", "needle"),
    [
        ("tokenizer.json", "delete", "tokenizer.json (the tokenizer) is missing"),
        ("tokenizer.json", "garble", "tokenizer.json is unreadable"),
        ("encoder.json", "delete", "encoder.json (the encoder's export record) is missing"),
        ("encoder.json", "garble", "encoder.json is unreadable"),
    ],
)
def test_a_damaged_tokenizer_or_encoder_record_is_a_clean_error(
    home: dict[str, Any], tmp_path: Path, name: str, damage: str, needle: str
) -> None:
    registry = tmp_path / "models"
    shutil.copytree(home["registry"] / "intent@v1", registry / "intent@v1")
    shutil.copytree(home["registry"] / ".cache", registry / ".cache")
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    path = registry / "intent@v1" / name
    if damage == "delete":
        path.unlink()
    else:  # same size, so only parsing it can tell
        path.write_bytes(b"\x00" * path.stat().st_size)
    with pytest.raises(NotReady, match=f"corrupt registry entry intent@v1: {name}"):
        load_student(registry, "intent@v1")
    res = _eval(config, "intent@v1", "--json")
    _clean_failure(res, f"corrupt registry entry intent@v1: {needle}")
    res = cli("models", "show", "intent@v1", "--json", "--config", str(config))
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "damaged"


@needs_banking77
def test_eval_rewrites_a_damaged_eval_json_with_ordinary_permissions(home: dict[str, Any], umask_022: None) -> None:
    path = home["registry"] / "intent@v1" / "eval.json"
    path.write_text('{"thresholds": {"0.9')  # truncated
    res = cli("models", "show", "intent@v1", "--json", "--config", str(home["config"]))
    assert res.exit_code == 0 and "eval.json is unreadable" in json.loads(res.stdout)["eval_error"]
    res = _eval(home["config"], "intent@v1", "--json")
    assert res.exit_code == 0, res.stderr
    saved = json.loads(path.read_text())
    assert saved["latest"]["agreement"] == json.loads(res.stdout)["agreement"]
    assert _mode(path) == 0o644


@needs_banking77
def test_eval_refuses_a_bad_chart_name_before_writing_anything(home: dict[str, Any], tmp_path: Path) -> None:
    path = home["registry"] / "intent@v2" / "eval.json"
    before = path.read_bytes() if path.exists() else None
    res = _eval(home["config"], "intent@v2", "--chart", str(tmp_path / "chart.svg"))
    _clean_failure(res, "--chart must end in .html or .png")
    assert (path.read_bytes() if path.exists() else None) == before
    assert not list(tmp_path.iterdir())


@needs_banking77
def test_eval_refuses_another_tasks_dataset(home: dict[str, Any], tmp_path: Path) -> None:
    other = shutil.copytree(home["dataset"], tmp_path / "other")
    man = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**man, "task": "sentiment"}))
    res = _eval(home["config"], "intent@v1", "--dataset", str(other))
    _clean_failure(res, "is for task 'sentiment', but intent@v1 was trained for 'intent'")


@needs_banking77
def test_eval_and_show_reject_an_empty_version(home: dict[str, Any]) -> None:
    _clean_failure(_eval(home["config"], "intent@"), "invalid model name 'intent@'")
