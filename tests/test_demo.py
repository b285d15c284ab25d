"""`insource demo --quick`: the whole loop, in a reduced size, from a folder of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_quick_runs_the_whole_loop(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "insource", "demo", "--quick", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    folder = tmp_path / "insource-demo"
    assert Path(summary["folder"]) == folder and (folder / "insource.toml").exists()
    assert summary["before"]["insourced"] == 0 and summary["before"]["requests"] == 1500
    assert summary["after"]["requests"] == 500 and summary["after"]["insourced"] > 0
    assert summary["after"]["avoided_usd"] > 0
    assert summary["projected_monthly_savings_usd"] > 0
    assert summary["after"]["agreement"] > 0.9
    assert "insourced" in result.stderr and "savings" in result.stderr and "SIMULATED" in result.stderr
    # everything it made stays inspectable with ordinary commands
    config = str(folder / "insource.toml")
    models = json.loads(
        subprocess.run(
            [sys.executable, "-m", "insource", "models", "list", "--json", "--config", config],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [m["name"] for m in models] == [summary["model"]]
    spend = json.loads(
        subprocess.run(
            [sys.executable, "-m", "insource", "spend", "--by", "task", "--json", "--config", config],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert spend[0]["task"] == "support-intent" and spend[0]["requests"] >= 2000
