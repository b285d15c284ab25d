"""Task kind (issue 10, item 2): short answers that repeat are labels however many there are, and `insource tasks`
says why each task got its kind (`kind_reason`), through the real CLI over a real SQLite store."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests._dataset_helpers import BASE_TS, _raw, _small_project
from tests.conftest import run_cli

from insource.capture.stats import kind_and_reason

VERBS = ["check", "change", "cancel", "dispute", "freeze", "unfreeze", "order", "top_up", "verify", "close",
         "open", "report", "activate", "renew", "transfer", "explain"]  # fmt: skip
NOUNS = ["card", "pin", "account", "payment", "refund", "fee", "limit", "address", "statement", "loan"]


def _many_label_project(folder: Path, labels: int = 160, per_label: int = 6) -> Path:
    names = [f"{v}_{n}" for v in VERBS for n in NOUNS][:labels]
    assert len(names) == labels
    raws = []
    for k in range(labels * per_label):
        label = names[k % labels]
        text = f"Message {k}: I need help, I want to {label.replace('_', ' ')} please"
        raws.append(_raw(k, BASE_TS + k, text, label, "local", "self-hosted", "Classify the intent.", task="intents"))
    for k in range(300):  # short free text that never repeats: generation, however short
        answer = f"Ticket {k} is about a late delivery to store {k % 7}."
        raws.append(_raw(5000 + k, BASE_TS + k, f"Summarise ticket {k}", answer, "local", "self-hosted",
                         "Summarise.", task="notes"))  # fmt: skip
    for k in range(40):  # long answers
        raws.append(_raw(6000 + k, BASE_TS + k, f"Write a reply {k % 4}", "Dear customer, " + "thank you. " * 12,
                         "local", "self-hosted", "Reply.", task="replies"))  # fmt: skip
    return _small_project(folder, raws)


def test_a_160_label_task_is_classification_and_says_why(tmp_path: Path) -> None:
    config = _many_label_project(tmp_path)
    rows = {r["task"]: r for r in json.loads(run_cli("tasks", "--json", "--config", str(config)).stdout)}
    intents = rows["intents"]
    assert (intents["distinct_outputs"], intents["kind"]) == (160, "classification")
    assert intents["kind_reason"] == "160 labels, each answer repeats 6× on average"
    assert rows["notes"]["kind"] == "generation" and rows["notes"]["distinct_outputs"] == 300
    assert "300 distinct answers for 300 requests" in rows["notes"]["kind_reason"]
    assert rows["replies"]["kind"] == "generation"  # 4 distinct answers that repeat, but far too long for labels
    assert re.search(r"answers average \d+ characters", rows["replies"]["kind_reason"])
    text = " ".join(run_cli("tasks", "--config", str(config)).stdout.split())
    assert "intents is classification: 160 labels, each answer repeats 6× on average" in text
    assert "notes is generation: 300 distinct answers" in text


def test_the_dataset_agrees_with_tasks_on_many_labels(tmp_path: Path) -> None:
    config = _many_label_project(tmp_path, labels=155, per_label=4)
    out = tmp_path / "ds"
    run_cli("dataset", "build", "--task", "intents", "--out", str(out), "--config", str(config))
    manifest = json.loads((out / "dataset.json").read_text())
    assert (manifest["kind"], manifest["kind_source"]) == ("classification", "inferred")
    assert manifest["kind_reason"].startswith("155 labels") and len(manifest["labels"]) == 155
    run_cli("dataset", "build", "--task", "notes", "--out", str(tmp_path / "notes"), "--config", str(config))
    assert json.loads((tmp_path / "notes" / "dataset.json").read_text())["kind"] == "generation"
    refused = run_cli("distill", "--task", "notes", "--dataset", str(tmp_path / "notes"), "--config", str(config),
                      check=False)  # fmt: skip
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "holds a generation task (300 distinct answers for 300 requests, only 0% of requests share" in message
    assert "--student lora --base-model DIR" in message and "--kind classification" in message


def test_a_task_with_one_answer_so_far_is_generation_with_a_reason(tmp_path: Path) -> None:
    raws = [_raw(0, BASE_TS, "Hi", "greeting", "local", "self-hosted", "Classify.", task="lonely")]
    config = _small_project(tmp_path, raws)
    row = json.loads(run_cli("tasks", "--json", "--config", str(config)).stdout)[0]
    assert (row["kind"], row["kind_reason"]) == ("generation", "1 answer so far: too few to see labels repeat")


def test_the_rule_has_no_label_cap() -> None:
    """Pure rule: 151 or 400 repeating labels are labels; the same count of one-off answers is not."""
    assert kind_and_reason({f"intent_{i}": 100 for i in range(151)}) == (
        "classification", "151 labels, each answer repeats 100× on average",
    )  # fmt: skip
    assert kind_and_reason({f"intent_{i}": 3 for i in range(400)})[0] == "classification"
    kind, reason = kind_and_reason({f"answer {i}": 1 for i in range(400)})
    assert kind == "generation" and reason.startswith("400 distinct answers for 400 requests, only 0%")
    assert kind_and_reason({"long answer " * 10: 50})[0] == "generation"
