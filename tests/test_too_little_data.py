"""Too little data is said, not hidden: `insource distill` refuses a validation split too small to estimate
agreement (naming how many examples are needed, and offering --force); `insource eval --target-agreement A`
exits 3 when no threshold reaches A, so scripts can rely on it. Through the real CLI, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import make_home

from insource.capture.dataset_read import write_dataset
from insource.demo import data as demo_data

TASK = "tiny"


def insource(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # help text unwrapped
    cmd = [sys.executable, "-m", "insource", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> tuple[Path, Path, Path]:
    """(config, a dataset with 5 validation examples, one with 12)."""
    base = tmp_path_factory.mktemp("tiny")
    config = make_home(base / "home", encoder_cache)
    pairs = demo_data.generate(100, seed=41, ambiguous_share=0)
    five = write_dataset(base / "five", TASK, {"train": pairs[:60], "val": pairs[60:65], "test": pairs[80:]})
    twelve = write_dataset(base / "twelve", TASK, {"train": pairs[:60], "val": pairs[60:72], "test": pairs[80:]})
    return config, five, twelve


def test_distill_refuses_a_validation_split_too_small_to_estimate_agreement(home: tuple[Path, Path, Path]) -> None:
    config, five, twelve = home
    registry = config.parent / "models"
    refused = insource("distill", "--task", TASK, "--dataset", str(five), "--config", str(config))
    message = flat(refused.stderr)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "too few validation examples: 5, at least 9 are needed to estimate agreement" in message
    assert "--force" in message and "needs 99" in message
    assert not any(p.name.startswith(TASK) for p in registry.iterdir())  # nothing registered
    at_target = insource(
        "distill", "--task", TASK, "--dataset", str(twelve), "--target-agreement", "0.95", "--config", str(config)
    )
    assert at_target.returncode == 2 and "too few validation examples: 12, at least 19" in flat(at_target.stderr)


def test_force_trains_anyway_and_says_what_it_cannot_show(home: tuple[Path, Path, Path]) -> None:
    config, five, _twelve = home
    forced = insource("distill", "--task", TASK, "--dataset", str(five), "--force", "--json", "--config", str(config))
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout)
    assert out["model"] == f"{TASK}@v1" and out["warnings"] and "holds 5 examples" in out["warnings"][0]
    assert "warning: the validation split holds 5 examples" in flat(forced.stderr)
    model = ["eval", "--task", TASK, "--model", out["model"], "--config", str(config)]
    unreached = insource(*model, "--target-agreement", "0.99", "--json")
    assert unreached.returncode == 3, unreached.stderr  # the contract: no threshold reaches 0.99
    assert json.loads(unreached.stdout)["threshold"] is None  # the results are still printed
    assert "at least 99 validation examples" in flat(unreached.stderr)
    assert insource(*model, "--json").returncode == 0  # no target given: nothing to miss
    assert "exit code is 3" in flat(insource("eval", "--help").stdout)
