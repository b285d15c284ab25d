"""Dataset builds over small hand-made projects: --force safety, tenants opted out after capture, task kind
(inferred or --kind) and near-duplicate detection."""

from __future__ import annotations

import json
from pathlib import Path

from tests._dataset_helpers import BASE_TS, OPTED_OUT_MARKER, _label_raws, _raw, _small_project, needs_banking77, run

pytestmark = needs_banking77


def test_force_never_replaces_the_store_config_or_registry(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    config = _small_project(project, _label_raws(40))
    (project / "models").mkdir()  # the registry (default: beside the store)
    (project / "models" / "small@v1").mkdir()
    (project / "dataset.json").write_text("{}")  # even when it also looks like a dataset
    for out in (project, project / "models", tmp_path):
        result = run(config, "dataset", "build", "--task", "small", "--out", str(out), "--force")
        assert result.exit_code != 0 and "the store, the config or the model registry" in result.stderr, out
    assert (project / "insource.db").exists() and (project / "insource.toml").exists()
    assert (project / "models" / "small@v1").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["project"]  # no staging folder left behind
    result = run(config, "dataset", "build", "--task", "small", "--out", str(project / "ds"))
    assert result.exit_code == 0, result.stderr


def test_tenant_opted_out_later_is_never_exported(tmp_path: Path) -> None:
    raws = _label_raws(30)
    for i in range(12):
        raws.append(
            _raw(100 + i, BASE_TS + 100 + i, f"{OPTED_OUT_MARKER} {i}", "card_arrival", "local", "self-hosted",
                 "Classify.", task="small", tenant="gone")
        )  # fmt: skip
    config = _small_project(tmp_path, raws, "[capture.tenants.gone]\nenabled = false\n")
    for purpose in ("train", "eval"):
        out = tmp_path / purpose
        result = run(config, "dataset", "build", "--task", "small", "--out", str(out), "--purpose", purpose)
        assert result.exit_code == 0, result.stderr
        assert "excluded 12 capture(s) of tenants opted out" in " ".join(result.stdout.split())
        manifest = json.loads((out / "dataset.json").read_text())
        assert manifest["opted_out_excluded"] == 12 and manifest["skipped"]["tenant_opted_out"] == 12
        assert sum(manifest["counts"].values()) == 30
        for path in out.iterdir():
            assert OPTED_OUT_MARKER not in path.read_text() and '"gone"' not in path.read_text(), path
    result = run(config, "dataset", "build", "--task", "small", "--out", str(tmp_path / "j"), "--json")
    assert json.loads(result.stdout)["counts"]["train"] > 0 and "excluded 12" in result.stderr


def test_a_few_hundred_label_answers_are_classification(tmp_path: Path) -> None:
    """350 Banking77 captures over ~76 intents (the old 20%-of-requests rule said 'generation'); answers padded
    with newlines/tabs count once, in `insource tasks` as in the dataset."""
    raws = _label_raws(350)
    labels = {r.output.strip() for r in raws if r.output}
    assert 70 <= len(labels) <= 77
    for k in range(200):  # free text, short: stays generation
        raws.append(_raw(1000 + k, BASE_TS + k, f"Summarise ticket {k}", f"Ticket {k} is about a late card.",
                         "local", "self-hosted", "Summarise.", task="notes"))  # fmt: skip
    config = _small_project(tmp_path, raws)
    tasks = {t["task"]: t for t in json.loads(run(config, "tasks", "--json").stdout)}
    assert tasks["small"]["distinct_outputs"] == len(labels) and tasks["small"]["kind"] == "classification"
    assert tasks["notes"]["distinct_outputs"] == 200 and tasks["notes"]["kind"] == "generation"
    result = run(config, "dataset", "build", "--task", "small", "--out", str(tmp_path / "small"))
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "small" / "dataset.json").read_text())
    assert (manifest["kind"], manifest["kind_source"]) == ("classification", "inferred")
    assert set(manifest["labels"]) <= labels and len(manifest["labels"]) >= 70
    result = run(config, "dataset", "build", "--task", "notes", "--out", str(tmp_path / "notes"))
    assert json.loads((tmp_path / "notes" / "dataset.json").read_text())["kind"] == "generation"


def test_kind_override_is_recorded(tmp_path: Path) -> None:
    raws = [
        _raw(k, BASE_TS + k, f"Is order {k} late?", "yes" if k % 6 == 0 else f"no, order {k} ships today", "local",
             "self-hosted", "Answer.", task="mixed")
        for k in range(60)
    ]  # fmt: skip
    config = _small_project(tmp_path, raws)
    assert json.loads(run(config, "tasks", "--json").stdout)[0]["kind"] == "generation"
    out = tmp_path / "ds"
    result = run(config, "dataset", "build", "--task", "mixed", "--out", str(out), "--kind", "classification")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    assert (manifest["kind"], manifest["kind_inferred"], manifest["kind_source"]) == (
        "classification", "generation", "--kind",
    )  # fmt: skip
    assert "yes" in manifest["labels"] and "set by --kind" in (out / "README.md").read_text()
    bad = run(config, "dataset", "build", "--task", "mixed", "--out", str(tmp_path / "x"), "--kind", "labels")
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()


def test_near_dedup_keeps_inputs_that_differ_in_numbers(tmp_path: Path) -> None:
    raws = [
        _raw(k, BASE_TS + k, f"GEN:topic {k}", f"Text about topic {k}.", "local", "self-hosted", "G", task="gen")
        for k in range(1, 60)
    ]
    raws.append(_raw(60, BASE_TS + 60, "  gen: TOPIC 7 !!", "Other.", "local", "self-hosted", "G", task="gen"))
    config = _small_project(tmp_path, raws)
    result = run(config, "dataset", "build", "--task", "gen", "--out", str(tmp_path / "ds"), "--json")
    assert result.exit_code == 0, result.stderr
    assert sum(json.loads(result.stdout)["counts"].values()) == 59
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["dedup"] == {"exact": 0, "near": 1}
