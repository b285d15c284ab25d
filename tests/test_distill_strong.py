"""The stronger classifier student (fine-tuned encoder + kNN evidence) on a small Banking77 subset."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from insource.capture.dataset_read import write_dataset
from insource.cli import _register, app
from insource.registry.entries import load_student

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason="Banking77 not found in ../shared/data"),
]
_register()


def _rows(name: str) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = defaultdict(list)
    with (DATA / name).open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_label[row["category"]].append(row["text"].strip())
    return by_label


def test_classifier_strong_fine_tunes_exports_and_serves(tmp_path: Path) -> None:
    train_rows, test_rows = _rows("train.csv"), _rows("test.csv")
    labels = sorted(train_rows)[:10]
    splits = {
        "train": [(t, lab) for lab in labels for t in train_rows[lab][:20]],
        "val": [(t, lab) for lab in labels for t in train_rows[lab][20:26]],
        "test": [(t, lab) for lab in labels for t in test_rows[lab][:10]],
    }
    ds = write_dataset(tmp_path / "ds", "intent", splits)
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    res = CliRunner().invoke(
        app,
        [
            "distill",
            "--task",
            "intent",
            "--student",
            "classifier-strong",
            "--dataset",
            str(ds),
            "--json",
            "--config",
            str(config),
        ],
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["model"] == "intent@v1" and out["student"] == "classifier-strong"
    folder = tmp_path / "models" / "intent@v1"
    enc = json.loads((folder / "encoder.json").read_text())
    assert enc["finetune"]["steps"] > 0 and enc["min_cosine_vs_torch"] >= 0.97
    assert not [p for p in folder.iterdir() if p.name.startswith(".finetune")]  # no training leftovers
    student = load_student(tmp_path / "models", "intent@v1")
    preds = student.predict([t for t, _ in splits["test"]])
    agreement = sum(p.answer == lab for p, (_, lab) in zip(preds, splits["test"], strict=True)) / len(preds)
    assert agreement > 0.8
    res = CliRunner().invoke(
        app, ["eval", "--task", "intent", "--model", "intent@v1", "--json", "--config", str(config)]
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["student"] == "classifier-strong"
    shutil.rmtree(tmp_path / "models")
