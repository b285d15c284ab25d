"""`insource distill` / `eval` / `models` end to end on a Banking77 subset (teacher answer = gold intent).

Real components throughout: the offline MiniLM exported to int8 ONNX, scikit-learn, the registry, the CLI.
"""

from __future__ import annotations

import csv
import json
import random
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import make_home
from typer.testing import CliRunner

from insource.capture.dataset_read import write_dataset
from insource.cli import _register, app
from insource.config import load_config
from insource.errors import NotReady
from insource.registry.entries import list_models, load_student
from insource.store import open_store

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"
pytestmark = pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason="Banking77 not found in ../shared/data")
N_CLASSES, N_TRAIN, N_VAL, N_TEST = 20, 30, 8, 12
OOD_TEXTS = [
    "def fibonacci(n): return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)",
    "Preheat the oven to 180 degrees and whisk the eggs with sugar",
    "The mitochondria is the powerhouse of the cell",
    "Quelle est la capitale de l'Australie ?",
    "Write a sonnet about the autumn moon over the sea",
    "SELECT name, price FROM products WHERE price > 100 ORDER BY price",
    "The striker scored twice in the second half of the derby",
    "Photosynthesis converts light energy into chemical energy in plants",
]

_register()
runner = CliRunner()


def _rows(name: str) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = defaultdict(list)
    with (DATA / name).open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_label[row["category"]].append(row["text"].strip())
    return by_label


def banking_subset(folder: Path, **kwargs: Any) -> Path:
    train_rows, test_rows = _rows("train.csv"), _rows("test.csv")
    labels = sorted(train_rows)[:N_CLASSES]
    rng = random.Random(7)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for label in labels:
        texts = rng.sample(train_rows[label], N_TRAIN + N_VAL)
        splits["train"] += [(t, label) for t in texts[:N_TRAIN]]
        splits["val"] += [(t, label) for t in texts[N_TRAIN:]]
        splits["test"] += [(t, label) for t in test_rows[label][:N_TEST]]
    return write_dataset(folder, "intent", splits, **kwargs)


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("distill")
    config = make_home(base / "home", encoder_cache)
    dataset = banking_subset(base / "ds")
    started = time.perf_counter()
    res = cli("distill", "--task", "intent", "--dataset", str(dataset), "--json", "--config", str(config))
    assert res.exit_code == 0, res.stderr
    return {
        "config": config,
        "dataset": dataset,
        "result": json.loads(res.stdout),
        "seconds": time.perf_counter() - started,
        "registry": load_config(config).registry_path(),
    }


def test_distill_json_registers_v1_with_metrics(trained: dict[str, Any]) -> None:
    result = trained["result"]
    assert result["model"] == "intent@v1"
    assert result["metrics"]["val_agreement"] > 0.8
    folder = trained["registry"] / "intent@v1"
    info = json.loads((folder / "model.json").read_text())
    assert info["student"] == "classifier" and len(info["labels"]) == N_CLASSES
    assert info["dataset"]["hashes"]["train"] and info["template"] == {}
    assert {"encoder.onnx", "tokenizer.json", "head.npz", "card.md", "model.json"} <= {p.name for p in folder.iterdir()}
    card = (folder / "card.md").read_text()
    assert "Data provenance" in card and "- Head: logistic regression" in card


def test_retraining_hits_the_embedding_cache_and_counts_up(trained: dict[str, Any]) -> None:
    res = cli("distill", "--task", "intent", "--dataset", str(trained["dataset"]), "--config", str(trained["config"]))
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "intent@v2"
    info = json.loads((trained["registry"] / "intent@v2" / "model.json").read_text())
    assert info["head"]["embedding_cache"]["misses"] == 0
    assert info["head"]["embedding_cache"]["hits"] == N_CLASSES * (N_TRAIN + N_VAL)
    assert (trained["registry"] / "intent@v1" / "model.json").is_file()  # v1 untouched


def test_student_answers_with_teacher_strings_and_is_deterministic(trained: dict[str, Any]) -> None:
    student = load_student(trained["registry"], "intent@v1")
    rows = [json.loads(line) for line in (trained["dataset"] / "test.examples.jsonl").read_text().splitlines()]
    preds = student.predict([r["input"] for r in rows])
    assert len(preds) == len(rows)
    assert {p.answer for p in preds} <= set(student.labels)
    agreement = np.mean([p.answer == r["output"] for p, r in zip(preds, rows, strict=True)])
    assert agreement > 0.8
    assert all(0.0 <= p.confidence <= 1.0 for p in preds)
    single = [student.predict([r["input"]])[0] for r in rows[:20]]
    assert single == preds[:20]  # batch and single inputs give identical answers and confidences


def test_a_student_with_a_lexical_view_serves_as_it_was_evaluated(
    trained: dict[str, Any], tmp_path: Path, encoder_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("insource.distill.fit.LEXICAL_WEIGHTS", (0.5,))  # force the mix whatever val prefers
    config = make_home(tmp_path / "home", encoder_cache)
    res = cli("distill", "--task", "intent", "--dataset", str(trained["dataset"]), "--json", "--config", str(config))
    assert res.exit_code == 0, res.stderr
    registry = load_config(config).registry_path()
    folder = registry / "intent@v1"
    assert json.loads((folder / "model.json").read_text())["head"]["lexical_weight"] == 0.5
    assert (folder / "lexical.npz").is_file()
    res = cli("eval", "--task", "intent", "--model", "intent@v1", "--json", "--config", str(config))
    assert res.exit_code == 0, res.stderr
    evaluated = json.loads(res.stdout)
    rows = [json.loads(line) for line in (trained["dataset"] / "test.examples.jsonl").read_text().splitlines()]
    preds = load_student(registry, "intent@v1").predict([r["input"] for r in rows])
    served = np.mean([p.answer == r["output"] for p, r in zip(preds, rows, strict=True)])
    assert abs(served - evaluated["agreement"]) < 1e-3 and served > 0.8
    data = (folder / "lexical.npz").read_bytes()
    (folder / "lexical.npz").write_bytes(data[:1000])  # truncated: not a readable archive any more
    with pytest.raises(NotReady, match="corrupt registry entry intent@v1"):
        load_student(registry, "intent@v1", workers=2)  # another cache key: loads from disk again
    res = cli("eval", "--task", "intent", "--model", "intent@v1", "--config", str(config))
    assert res.exit_code != 0 and "corrupt registry entry intent@v1" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    (folder / "lexical.npz").unlink()
    with pytest.raises(NotReady, match="lexical view"):
        load_student(registry, "intent@v1", workers=3)


def test_out_of_distribution_inputs_are_deferred(trained: dict[str, Any]) -> None:
    student = load_student(trained["registry"], "intent@v1")
    ood = student.predict(OOD_TEXTS)
    assert sum(p.ood for p in ood) >= len(OOD_TEXTS) - 1
    assert all(p.confidence == 0.0 for p in ood if p.ood)
    rows = [json.loads(line) for line in (trained["dataset"] / "test.examples.jsonl").read_text().splitlines()]
    in_dist = student.predict([r["input"] for r in rows])
    assert np.mean([p.ood for p in in_dist]) < 0.05


def test_eval_json_contract_chart_and_thresholds(trained: dict[str, Any], tmp_path: Path) -> None:
    chart = tmp_path / "eval.html"
    res = cli(
        "eval",
        "--task",
        "intent",
        "--model",
        "intent@v1",
        "--target-agreement",
        "0.95",
        "--json",
        "--chart",
        str(chart),
        "--config",
        str(trained["config"]),
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    for key in (
        "model",
        "split",
        "n",
        "agreement",
        "ece",
        "target_agreement",
        "threshold",
        "coverage_at_threshold",
        "agreement_at_threshold",
        "curve",
        "latency_ms_p50",
        "cost_per_1k_usd",
        "teacher_cost_per_1k_usd",
    ):
        assert key in out, key
    assert out["model"] == "intent@v1" and out["split"] == "test" and out["n"] == N_CLASSES * N_TEST
    assert 0.8 < out["agreement"] <= 1.0 and 0.0 <= out["ece"] < 0.2
    assert all(set(p) == {"threshold", "coverage", "agreement"} for p in out["curve"])
    assert out["latency_ms_p50"] > 0 and out["cost_per_1k_usd"] < out["teacher_cost_per_1k_usd"]
    assert out["teacher_cost_per_1k_usd"] == pytest.approx(0.2)
    if out["threshold"] is not None:
        assert 0 < out["coverage_at_threshold"] <= 1
    html = chart.read_text()
    assert "plotly" in html.lower() and len(html) > 1_000_000  # plotly.js embedded: works offline
    saved = json.loads((trained["registry"] / "intent@v1" / "eval.json").read_text())
    assert saved["latest"]["threshold"] == out["threshold"]
    assert load_student(trained["registry"], "intent@v1").thresholds == (
        {} if out["threshold"] is None else {"0.95": out["threshold"]}
    )


def test_eval_with_gold_labels_file(trained: dict[str, Any], tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (trained["dataset"] / "test.examples.jsonl").read_text().splitlines()]
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": r["id"], "label": r["output"]}) + "\n" for r in rows))
    res = cli(
        "eval",
        "--task",
        "intent",
        "--model",
        "intent@latest",
        "--labels",
        str(gold),
        "--json",
        "--config",
        str(trained["config"]),
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["teacher_gold_agreement"] == 1.0 and out["gold_agreement"] == out["agreement"]


def test_models_list_and_show(trained: dict[str, Any]) -> None:
    res = cli("models", "list", "--json", "--config", str(trained["config"]))
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows and {"name", "task", "version", "student", "created_at", "metrics"} <= set(rows[0])
    res = cli("models", "show", "intent@v1", "--json", "--config", str(trained["config"]))
    assert res.exit_code == 0 and json.loads(res.stdout)["name"] == "intent@v1"
    res = cli("models", "show", "intent@v99", "--config", str(trained["config"]))
    assert res.exit_code != 0 and "not registered" in res.stderr


def test_distill_finds_the_newest_dataset_in_the_audit_table(trained: dict[str, Any]) -> None:
    store = open_store(load_config(trained["config"]))
    store.execute(
        "INSERT INTO audit (id, ts, action, task, purpose, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (uuid.uuid4().hex, time.time(), "dataset.build", "intent", "train", str(trained["dataset"]), "{}"),
    )
    store.close()
    res = cli("distill", "--task", "intent", "--json", "--config", str(trained["config"]))
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["model"].startswith("intent@v")


def _refused(config: Path, dataset: Path, needle: str) -> None:
    registry = load_config(config).registry_path()
    before = sorted(p.name for p in registry.iterdir()) if registry.exists() else []
    res = cli("distill", "--task", "intent", "--dataset", str(dataset), "--config", str(config))
    assert res.exit_code == 2, res.stderr  # a handled error, not a crash
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    after = sorted(p.name for p in registry.iterdir()) if registry.exists() else []
    assert after == before  # nothing registered, no staging folder left


def test_refusals_leave_nothing_registered(tmp_path: Path, encoder_cache: Path) -> None:
    config = make_home(tmp_path / "home", encoder_cache)
    few = write_dataset(tmp_path / "few", "intent", {"train": [("a", "x"), ("b", "y")] * 3, "val": [("c", "x")] * 5})
    _refused(config, few, "too few examples: 6 training examples, at least 20 are needed")
    single = write_dataset(
        tmp_path / "single", "intent", {"train": [(f"text {i}", "only") for i in range(30)], "val": [("v", "only")] * 5}
    )
    _refused(config, single, "a single class")
    evald = banking_subset(tmp_path / "evalonly", purpose="eval")
    _refused(config, evald, "built for evaluation only")
    corrupt = banking_subset(tmp_path / "corrupt")
    with (corrupt / "train.examples.jsonl").open("a") as fh:
        fh.write("{truncated\n")
    _refused(config, corrupt, "corrupt dataset")
    (corrupt / "dataset.json").unlink()
    _refused(config, corrupt, "dataset.json is missing")
    _refused(config, tmp_path / "nowhere", "does not exist")
    other = banking_subset(tmp_path / "other")
    man = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**man, "task": "sentiment"}))
    _refused(config, other, "is for task 'sentiment'")


def test_student_rejects_unknown_kind(trained: dict[str, Any]) -> None:
    res = cli(
        "distill",
        "--task",
        "intent",
        "--student",
        "giant",
        "--dataset",
        str(trained["dataset"]),
        "--config",
        str(trained["config"]),
    )
    assert res.exit_code != 0 and "unknown student" in res.stderr
    assert all("error" not in r for r in list_models(trained["registry"]))
