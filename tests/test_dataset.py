"""Dataset builder end to end: Banking77 prompts captured through process_capture + the batched writer,
then `insource dataset build` through the CLI (counts, splits, dedup, provenance, out folder, canaries, tasks).

Terms guards and carve-outs are in tests/test_dataset_terms.py; small hand-made projects (--force safety,
opted-out tenants, kind inference, near-dedup) in tests/test_dataset_small_projects.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tests._dataset_helpers import (
    BASE_TS,
    CANARIES,
    OPTED_OUT_MARKER,
    TASK,
    Corpus,
    _read_jsonl,
    _system_prompt,
    app,
    build,
    build_corpus,
    cli,
    needs_banking77,
    runner,
)

pytestmark = needs_banking77


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory)


def test_train_build_counts_splits_dedup_and_provenance(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = build(corpus, out)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == {"out", "task", "counts", "refused", "providers"}
    assert set(summary["counts"]) == {"train", "val", "test"}
    expected = corpus.provider_counts["local"] - corpus.exact_dups - corpus.near_dups
    assert sum(summary["counts"].values()) == expected
    assert summary["counts"]["test"] >= expected // 10 - 1 and summary["counts"]["train"] >= int(expected * 0.78)
    assert set(summary["providers"]) == {"local"}
    assert summary["refused"]["openai"]["count"] == corpus.provider_counts["openai"]
    assert summary["refused"]["anthropic"]["count"] == corpus.provider_counts["anthropic"]
    assert "compete" in summary["refused"]["openai"]["clause"]
    assert summary["refused"]["anthropic"]["terms"] == "anthropic"

    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["dedup"] == {"exact": corpus.exact_dups, "near": corpus.near_dups}
    assert manifest["kind"] == "classification" and set(manifest["labels"]) <= set(corpus.labels)
    assert manifest["terms"]["self-hosted"]["category"] == "any"
    assert manifest["providers"]["local"]["upstream_models"] == {"llama-3-8b": expected}
    local_canaries = [c for c in corpus.canary_ids if corpus.eligible.get(c) == "local"]
    assert local_canaries
    for placeholder in ("email", "card", "iban", "phone"):
        assert manifest["redaction"]["replacements"][placeholder] == len(local_canaries)
    assert manifest["redaction"]["replacements"]["secrets"] == 2 * len(local_canaries)
    assert manifest["redaction"]["unredacted_examples"] == 0
    splits = {name: _read_jsonl(out / f"{name}.examples.jsonl") for name in ("train", "val", "test")}
    assert max(e["ts"] for e in splits["train"]) < min(e["ts"] for e in splits["test"])
    assert max(e["ts"] for e in splits["train"]) < min(e["ts"] for e in splits["val"])
    assert max(e["ts"] for e in splits["val"]) < min(e["ts"] for e in splits["test"])
    for name, rows in splits.items():
        assert len(rows) == summary["counts"][name]
        chat = _read_jsonl(out / f"{name}.jsonl")
        assert [c["messages"][-1] for c in chat] == [{"role": "assistant", "content": e["output"]} for e in rows]
    import hashlib

    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert "# Dataset: intent" in (out / "README.md").read_text()


def test_examples_carry_the_input_not_the_boilerplate(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert build(corpus, out).exit_code == 0
    rows = _read_jsonl(out / "train.examples.jsonl")
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["template"]["constant"][0]["role"] == "system"
    checked = 0
    for ex in rows:
        assert set(ex) == {
            "id",
            "ts",
            "input",
            "output",
            "messages",
            "teacher_cost_usd",
            "provider",
            "upstream_model",
            "terms",
            "terms_category",
            "tenant",
        }
        assert (ex["terms"], ex["terms_category"]) == ("self-hosted", "any")
        if ex["id"] in corpus.texts and ex["id"] not in corpus.canary_ids:
            assert ex["input"] == corpus.texts[ex["id"]].strip()
            assert ex["output"] in corpus.labels
            assert ex["teacher_cost_usd"] == pytest.approx(0.00015)
            checked += 1
    assert checked > 300


def test_out_folder_contract(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = build(corpus, out)
    assert result.exit_code != 0 and "not empty" in result.stderr and result.stdout == ""
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces the folder (never the store's: see tests/test_dataset_small_projects.py)
    result = build(corpus, out, "--force")
    assert result.exit_code == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "dataset.json").exists()
    previous = tmp_path / "previous"
    assert build(corpus, previous).exit_code == 0
    (previous / "stale.txt").write_text("old")
    result = build(corpus, previous, "--force")
    assert result.exit_code == 0, result.stderr
    assert not (previous / "stale.txt").exists() and (previous / "dataset.json").exists()
    human = cli(corpus, "dataset", "build", "--task", TASK, "--out", str(tmp_path / "h"))
    assert human.exit_code == 0 and str(tmp_path / "h") in " ".join(human.stdout.split())
    assert "train" in human.stdout and "refused" in human.stdout and "anthropic" in human.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_input_is_a_clear_error(corpus: Corpus, tmp_path: Path) -> None:
    result = cli(corpus, "dataset", "build", "--task", "nope", "--out", str(tmp_path / "x"))
    assert result.exit_code != 0 and "unknown task 'nope'" in result.stderr and not (tmp_path / "x").exists()
    result = cli(corpus, "dataset", "build", "--task", TASK, "--out", str(tmp_path / "x"), "--since", "2099-01-01")
    assert result.exit_code != 0 and "empty selection" in result.stderr
    result = cli(corpus, "dataset", "build", "--task", TASK, "--out", str(tmp_path / "x"), "--since", "yesterday")
    assert result.exit_code != 0 and "invalid --since" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli(corpus, "dataset", "build", "--task", TASK, "--out", str(blocker / "sub"))
    assert result.exit_code != 0 and "cannot write" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nurl = 3\n")
    result = runner.invoke(app, ["tasks", "--config", str(bad)])
    assert result.exit_code != 0 and "invalid config" in result.stderr
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr


def test_time_window_parquet_and_random_split(corpus: Corpus, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    until = str(BASE_TS + 300 * 60)
    result = build(corpus, tmp_path / "pq", "--format", "parquet", "--until", until, "--no-dedup")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    for name, count in summary["counts"].items():
        table = pq.read_table(tmp_path / "pq" / f"{name}.parquet")
        assert table.num_rows == count
        assert max(table.column("ts").to_pylist() or [0]) < float(until)
    assert not (tmp_path / "pq" / "train.jsonl").exists()
    first = build(corpus, tmp_path / "r1", "--split", "random", "--seed", "5")
    second = build(corpus, tmp_path / "r2", "--split", "random", "--seed", "5")
    assert json.loads(first.stdout)["counts"] == json.loads(second.stdout)["counts"]
    ids1 = [e["id"] for e in _read_jsonl(tmp_path / "r1" / "test.examples.jsonl")]
    ids2 = [e["id"] for e in _read_jsonl(tmp_path / "r2" / "test.examples.jsonl")]
    assert ids1 == ids2
    timed = [e["id"] for e in _read_jsonl(tmp_path / "pq" / "test.examples.jsonl")]
    assert ids1 != timed


def test_canaries_and_opted_out_data_appear_nowhere(corpus: Corpus, tmp_path: Path) -> None:
    for purpose in ("train", "eval"):
        assert build(corpus, tmp_path / purpose, "--purpose", purpose).exit_code == 0
    con = sqlite3.connect(corpus.db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = con.execute("SELECT data FROM blobs").fetchall()
    con.close()
    assert any("[CARD]" in str(r[0]) and "[IBAN]" in str(r[0]) for r in stored)
    files = [p for p in corpus.db.parent.iterdir() if p.is_file()]
    files += [p for p in tmp_path.rglob("*") if p.is_file()]
    blobs = b"".join(p.read_bytes() for p in files)
    needles = [*CANARIES, OPTED_OUT_MARKER, "AKIAZZCANARY", "canary.person"]
    needles += [c.replace(" ", "") for c in CANARIES]
    for needle in needles:
        assert needle.encode() not in blobs, needle
    eval_rows = _read_jsonl(tmp_path / "eval" / "test.examples.jsonl") + _read_jsonl(
        tmp_path / "eval" / "train.examples.jsonl"
    )
    assert all(r["tenant"] != "optout" for r in eval_rows)


def test_tasks_show_and_search(corpus: Corpus) -> None:
    result = cli(corpus, "tasks", "--json")
    assert result.exit_code == 0, result.stderr
    tasks = {t["task"]: t for t in json.loads(result.stdout)}
    assert set(tasks) == {TASK, "summaries", "gemini-only"}
    assert set(tasks[TASK]) == {"task", "requests", "refused", "cost_usd", "distinct_outputs", "kind", "kind_reason"}
    n_intent = sum(1 for i in corpus.texts) + 21  # consenting requests (all statuses) incl. duplicates
    assert tasks[TASK]["requests"] == n_intent
    assert tasks[TASK]["cost_usd"] == pytest.approx(0.00015 * n_intent)
    assert tasks[TASK]["kind"] == "classification" and 30 < tasks[TASK]["distinct_outputs"] <= 77
    assert tasks["summaries"]["kind"] == "generation" and tasks["summaries"]["distinct_outputs"] == 30

    cid = corpus.canary_ids[0]
    shown = json.loads(cli(corpus, "capture", "show", cid, "--json").stdout)
    assert shown["id"] == cid and shown["terms"] in {"self-hosted", "openai", "anthropic"}
    assert shown["messages"][0]["role"] == "system" and "[EMAIL]" in shown["messages"][1]["content"]
    assert shown["redactions"]["email"] == 1 and "secrets" in shown["redactors"]
    assert shown["params"] == {"metadata": {"task": TASK}, "model": "classifier", "temperature": 0}
    missing = cli(corpus, "capture", "show", "nope")
    assert missing.exit_code != 0 and "no capture" in missing.stderr

    found = json.loads(cli(corpus, "capture", "search", "--task", TASK, "--contains", "[IBAN]", "--json").stdout)
    assert {f["id"] for f in found} == set(corpus.canary_ids[:20])
    system = _system_prompt(corpus.labels).lower()
    words = [w.strip("?.,!") for w in corpus.texts["req-00000"].split()]
    word = max((w for w in words if w.lower() not in system), key=len)
    hits = json.loads(
        cli(corpus, "capture", "search", "--task", TASK, "--contains", word, "--limit", "3", "--json").stdout
    )
    assert 1 <= len(hits) <= 3 and all(word.lower() in (h["input"] + h["output"]).lower() for h in hits)
