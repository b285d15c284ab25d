"""`insource distill --student auto`: train both classifier students, pick the one that insources more on val."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import make_home
from tests.test_distill import DATA, banking_subset, cli

from insource.config import load_config
from insource.distill.export import cached_base_encoder
from insource.distill.select import pick
from insource.registry.entries import list_models, resolve

needs_banking77 = pytest.mark.skipif(not (DATA / "train.csv").is_file(), reason="Banking77 not found in ../shared/data")
TARGET = "0.99"  # the default; reachable with the subset's 160 validation examples (coverage > 0)


def _cand(model: str, student: str, coverage: float) -> dict[str, Any]:
    return {
        "model": model,
        "student": student,
        "val_coverage_at_target": coverage,
        "val_agreement_at_threshold": None,
        "threshold": None,
    }


def test_pick_prefers_higher_coverage_and_breaks_ties_towards_the_default() -> None:
    assert pick([_cand("t@v1", "classifier", 0.5), _cand("t@v2", "classifier-strong", 0.7)]) == 1
    assert pick([_cand("t@v1", "classifier", 0.7), _cand("t@v2", "classifier-strong", 0.5)]) == 0
    assert pick([_cand("t@v1", "classifier", 0.6), _cand("t@v2", "classifier-strong", 0.6)]) == 0
    assert pick([_cand("t@v1", "classifier", 0.0), _cand("t@v2", "classifier-strong", 0.0)]) == 0


@pytest.fixture(scope="module")
def auto_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not (DATA / "train.csv").is_file():
        pytest.skip("Banking77 not found in ../shared/data")
    base = tmp_path_factory.mktemp("auto")
    encoders = tmp_path_factory.getbasetemp() / "insource-encoder-cache"
    cached_base_encoder(encoders)
    config = make_home(base / "home", encoders)
    return {"config": config, "dataset": banking_subset(base / "ds"), "registry": load_config(config).registry_path()}


def _distill_auto(home: dict[str, Any], *extra: str) -> Any:
    args = ("distill", "--task", "intent", "--student", "auto", "--target-agreement", TARGET)
    res = cli(*args, "--dataset", str(home["dataset"]), "--config", str(home["config"]), *extra)
    assert res.exit_code == 0, res.stderr
    return res


def _check_candidates(out: dict[str, Any], registry: Path) -> None:
    cands = out["candidates"]
    assert [c["student"] for c in cands] == ["classifier", "classifier-strong"]
    keys = {"model", "student", "val_coverage_at_target", "val_agreement_at_threshold", "threshold"}
    assert all(keys <= set(c) for c in cands)
    registered = {r["name"]: r["student"] for r in list_models(registry)}
    assert all(registered[c["model"]] == c["student"] for c in cands)  # both registered, each its own version
    winner = next(c for c in cands if c["model"] == out["model"])
    other = next(c for c in cands if c["model"] != out["model"])
    assert winner["val_coverage_at_target"] >= other["val_coverage_at_target"]
    if winner["val_coverage_at_target"] == other["val_coverage_at_target"]:
        assert winner["student"] == "classifier"  # ties go to the cheaper default
    assert out["student"] == winner["student"] and out["metrics"]["val_agreement"] > 0.8
    info = json.loads((registry / out["model"] / "model.json").read_text())
    assert [c["model"] for c in info["selected_over"]] == [other["model"]]
    assert info["selection"]["val_coverage_at_target"] == winner["val_coverage_at_target"]
    assert "selected_over" not in json.loads((registry / other["model"] / "model.json").read_text())


@pytest.mark.slow
@needs_banking77
def test_auto_registers_both_and_picks_the_better_on_validation(auto_home: dict[str, Any]) -> None:
    out = json.loads(_distill_auto(auto_home, "--json").stdout)
    assert {c["model"] for c in out["candidates"]} == {"intent@v1", "intent@v2"}
    assert out["target_agreement"] == float(TARGET)
    assert resolve(auto_home["registry"], "intent@latest").name == out["model"] == "intent@v2"  # the winner is latest
    _check_candidates(out, auto_home["registry"])
    # the validation numbers are exactly what `insource eval` derives from the val split at the same target
    res = cli(
        "eval", "--task", "intent", "--model", out["model"], "--split", "val", "--target-agreement", TARGET, "--json",
        "--config", str(auto_home["config"]),
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["threshold"] == out["threshold"] and ev["coverage_at_threshold"] == out["val_coverage_at_target"]

    text = _distill_auto(auto_home)
    last = text.stdout.strip().splitlines()[-1]
    assert last == "intent@v4"  # the loser was registered first
    assert "candidates on val" in text.stderr and f"picked {last}" in text.stderr  # Rich summary on stderr
    winner_student = json.loads((auto_home["registry"] / last / "model.json").read_text())["student"]
    assert winner_student == out["student"]  # same data, same choice


@needs_banking77
def test_auto_rejects_an_impossible_target(auto_home: dict[str, Any]) -> None:
    res = cli(
        "distill", "--task", "intent", "--student", "auto", "--target-agreement", "1.5",
        "--dataset", str(auto_home["dataset"]), "--config", str(auto_home["config"]),
    )  # fmt: skip
    assert res.exit_code == 2 and "--target-agreement must be in (0, 1]" in res.stderr
