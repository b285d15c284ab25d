"""Dataset builder end to end: Banking77 prompts captured through process_capture + the batched writer,
then `insource dataset build` through the CLI (counts, splits, dedup, provenance, terms guard, canaries)."""

from __future__ import annotations

import csv
import functools
import json
import random
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.cli import _register, app
from insource.errors import NotReady
from insource.store import Store
from insource.store.writer import BatchWriter

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "banking77"
pytestmark = pytest.mark.skipif(not (DATA / "train.csv").exists(), reason="../shared/data/banking77 not present")

TASK = "intent"
BASE_TS = 1_700_000_000.0
# Canary secrets and personal data: none of these strings may reach the store or an export.
CANARIES = {
    "sk-canaryKEY0123456789abcdefXYZ": "[SECRET]",
    "AKIAZZCANARY0000TEST": "[SECRET]",
    "canary.person@example.org": "[EMAIL]",
    "4539 1488 0343 6467": "[CARD]",  # Luhn-valid
    "GB82 WEST 1234 5698 7654 32": "[IBAN]",  # mod-97 valid
    "+44 20 7946 0958": "[PHONE]",
}
OPTED_OUT_MARKER = "zebra-opt-out-7731"
WORDS = ["red", "blue", "green", "virtual", "metal", "new", "old", "lost", "frozen", "expired"]


@dataclass
class Corpus:
    root: Path
    config: Path
    db: Path
    labels: list[str]
    texts: dict[str, str] = field(default_factory=dict)  # capture id -> original user text
    provider_counts: dict[str, int] = field(default_factory=dict)  # eligible (status 200) per provider
    exact_dups: int = 0
    near_dups: int = 0
    canary_ids: list[str] = field(default_factory=list)
    eligible: dict[str, str] = field(default_factory=dict)  # capture id -> provider, for status-200 captures


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _system_prompt(labels: list[str]) -> str:
    return (
        "You are a banking assistant. Classify the customer's message into exactly one intent from this list:\n"
        + "\n".join(labels)
        + "\nAnswer with the intent name only."
    )


def _raw(i: int, ts: float, text: str, label: str, provider: str, terms: str, system: str, **kw: Any) -> CaptureRaw:
    fields: dict[str, Any] = {
        "id": f"req-{i:05d}",
        "ts": ts,
        "tenant": kw.get("tenant", "acme"),
        "key_id": "key-1",
        "task": kw.get("task", TASK),
        "model": "classifier",
        "provider": provider,
        "upstream_model": {"local": "llama-3-8b", "openai": "gpt-4o-mini", "anthropic": "claude-haiku"}.get(
            provider, "gemini-2.0-flash"
        ),
        "served_by": f"{provider}:model",
        "terms": terms,
        "consent": kw.get("consent", True),
        "redact": True,
        "redactors": ("secrets", "email", "phone", "card", "iban"),
        "request": {
            "model": "classifier",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
            "temperature": 0,
            "metadata": {"task": kw.get("task", TASK)},
        },
        "output": label if kw.get("status", 200) == 200 else None,
        "response": None,
        "upstream_version": "model-2024-07-18",
        "finish_reason": "stop",
        "status": kw.get("status", 200),
        "cost_usd": 0.00015,
    }
    return CaptureRaw(**fields)


def _usage(raw: CaptureRaw) -> dict[str, Any]:
    return {
        "id": raw.id,
        "ts": raw.ts,
        "tenant": raw.tenant,
        "key_id": raw.key_id,
        "endpoint": "chat.completions",
        "model": raw.model,
        "served_by": raw.served_by,
        "task": raw.task,
        "status": raw.status,
        "cost_usd": raw.cost_usd,
    }


def _plan(rows: list[dict[str, str]], labels: list[str]) -> tuple[list[CaptureRaw], Corpus]:
    """The traffic: 70% self-hosted, 15% OpenAI, 15% Anthropic; injected duplicates, canaries, errors."""
    system = _system_prompt(labels)
    corpus = Corpus(root=Path(), config=Path(), db=Path(), labels=labels)
    raws: list[CaptureRaw] = []
    counts: dict[str, int] = {"local": 0, "openai": 0, "anthropic": 0}
    rng = random.Random(7)
    local_history: list[tuple[str, str]] = []
    for i, row in enumerate(rows):
        ts = BASE_TS + i * 60.0
        provider = rng.choices(["local", "openai", "anthropic"], weights=[70, 15, 15])[0]
        terms = {"local": "self-hosted", "openai": "openai", "anthropic": "anthropic"}[provider]
        text = row["text"]
        if i % 40 == 5:  # canary personal data and secrets inside the prompt
            text = f"{text} Contact {' / '.join(CANARIES)} please."
            corpus.canary_ids.append(f"req-{i:05d}")
        status = 500 if i % 97 == 13 else 200
        raws.append(_raw(i, ts, text, row["category"], provider, terms, system, status=status))
        corpus.texts[raws[-1].id] = text
        if status == 200:
            counts[provider] += 1
            corpus.eligible[raws[-1].id] = provider
            if provider == "local" and i % 40 != 5:
                local_history.append((text, row["category"]))
    n = len(rows)
    for j in range(12):  # exact duplicates (same input, same answer), later in time, self-hosted
        text, label = local_history[j * 3]
        raws.append(_raw(n + j, BASE_TS + (n + j) * 60.0, text, label, "local", "self-hosted", system))
    for j in range(9):  # near duplicates: case, punctuation and spacing changes
        text, label = local_history[j * 5 + 1]
        variant = "  " + text.upper().replace(" ", "  ") + " !!"
        raws.append(_raw(n + 12 + j, BASE_TS + (n + 12 + j) * 60.0, variant, label, "local", "self-hosted", system))
    for j in range(5):  # an opted-out tenant: never captured
        raws.append(
            _raw(
                n + 30 + j,
                BASE_TS + j,
                f"{OPTED_OUT_MARKER} {j}",
                labels[0],
                "local",
                "self-hosted",
                system,
                consent=False,
                tenant="optout",
            )
        )
    counts["local"] += 21
    corpus.provider_counts = counts
    corpus.exact_dups, corpus.near_dups = 12, 9
    return raws, corpus


def _extra_tasks(n0: int) -> list[CaptureRaw]:
    """A generation task and a task answered only by a provider whose terms forbid training."""
    out = []
    for k in range(30):
        summary = f"Summary {k}: the customer describes issue number {k * 7} in detail and asks for a refund."
        raw = _raw(
            n0 + k, BASE_TS + k, f"Summarise ticket {k}", summary, "openai", "openai", "Summarise.", task="summaries"
        )
        out.append(raw)
    for k in range(6):
        raw = _raw(
            n0 + 100 + k,
            BASE_TS + k,
            f"message {k}",
            "card_arrival",
            "google",
            "google-gemini",
            "S",
            task="gemini-only",
        )
        out.append(raw)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("ds")
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as fh:
        all_rows = list(csv.DictReader(fh))
    labels = json.loads((DATA / "categories.json").read_text())
    random.Random(3).shuffle(all_rows)
    seen, rows = set(), []
    for row in all_rows:  # a sample with no near-duplicates of its own, so injected ones are countable
        key = _letters(row["text"])
        if key and key not in seen:
            seen.add(key)
            rows.append(row)
        if len(rows) == 600:
            break
    raws, corpus = _plan(rows, labels)
    raws += _extra_tasks(5000)
    config = root / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///data/insource.db"\n')
    store = Store(root / "data" / "insource.db")
    writer = BatchWriter(store, root / "spool", batch_size=200)
    for raw in raws:
        writer.submit_fn(functools.partial(process_capture, raw))
        if raw.consent:
            writer.submit("usage", _usage(raw))
    writer.close()
    assert writer.report()["failed"] == 0 and writer.report()["dropped"] == 0
    store.close()
    corpus.root, corpus.config, corpus.db = root, config, root / "data" / "insource.db"
    return corpus


runner = CliRunner()
_register()


def cli(corpus: Corpus, *args: str) -> Any:
    return runner.invoke(app, [*args, "--config", str(corpus.config)])


def build(corpus: Corpus, out: Path, *extra: str) -> Any:
    return cli(corpus, "dataset", "build", "--task", TASK, "--out", str(out), "--json", *extra)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def test_allow_internal_carve_out_and_eval(corpus: Corpus, tmp_path: Path) -> None:
    result = build(corpus, tmp_path / "internal", "--allow-internal")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["providers"]) == {"local", "openai"}
    assert summary["providers"]["openai"]["count"] > 0
    assert set(summary["refused"]) == {"anthropic"}
    manifest = json.loads((tmp_path / "internal" / "dataset.json").read_text())
    assert manifest["carve_out"]["allow_internal"] is True and manifest["carve_out"]["examples"]["openai"] > 0

    result = build(corpus, tmp_path / "eval", "--purpose", "eval")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["refused"] == {}
    assert set(summary["providers"]) == {"local", "openai", "anthropic"}

    audit = json.loads(cli(corpus, "audit", "--json").stdout)
    builds = [a for a in audit if a["action"] == "dataset.build"]
    assert any(a["purpose"] == "eval" for a in builds)
    assert any(a["detail"]["allow_internal"] and a["detail"]["carve_out"] for a in builds)


def test_everything_refused_names_provider_and_clause(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    result = cli(corpus, "dataset", "build", "--task", "gemini-only", "--out", str(out))
    assert result.exit_code != 0
    assert "google" in result.stderr and "google-gemini" in result.stderr
    assert "compete with the Services" in " ".join(result.stderr.split())
    assert not out.exists() and not list(tmp_path.glob(".refused*"))
    audit = json.loads(cli(corpus, "audit", "--task", "gemini-only", "--json").stdout)
    assert audit[0]["action"] == "dataset.refused" and audit[0]["detail"]["refused"]["google"]["count"] == 6
    result = cli(corpus, "dataset", "build", "--task", "gemini-only", "--out", str(out), "--purpose", "eval")
    assert result.exit_code == 0, result.stderr


def test_out_folder_contract(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = build(corpus, out)
    assert result.exit_code != 0 and "not empty" in result.stderr and result.stdout == ""
    assert (out / "keep.txt").read_text() == "mine"
    result = build(corpus, out, "--force")  # --force replaces the folder (never the store's: see below)
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
    assert set(tasks[TASK]) == {"task", "requests", "cost_usd", "distinct_outputs", "kind"}
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


def test_unknown_terms_profile_is_strictest_and_missing_store(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text(
        '[store]\nurl = "sqlite:///db/insource.db"\n\n[terms.acme-llm]\ncategory = "any"\nsummary = "ours"\n'
    )
    empty = runner.invoke(app, ["tasks", "--json", "--config", str(config)])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    nostore = runner.invoke(app, ["dataset", "build", "--task", "t", "--out", str(tmp_path / "o"), "--config",
                                  str(config)])  # fmt: skip
    assert nostore.exit_code != 0 and "no store" in nostore.stderr and not (tmp_path / "db").exists()

    store = Store(tmp_path / "db" / "insource.db")
    rows = []
    for i, (provider, terms) in enumerate([("vendor", "mystery-vendor")] * 4 + [("acme", "acme-llm")] * 6):
        raw = _raw(i, BASE_TS + i, f"question about {WORDS[i]} cards", "card_arrival", provider, terms, "S", task="t")
        rows += process_capture(raw)
    store.write_batch(rows)
    store.close()
    out = tmp_path / "new" / "nested" / "ds"
    result = runner.invoke(app, ["dataset", "build", "--task", "t", "--out", str(out), "--json", "--config",
                                 str(config)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["refused"]["vendor"]["count"] == 4 and summary["refused"]["vendor"]["category"] == "none"
    assert "unknown terms profile 'mystery-vendor'" in " ".join(result.stderr.split())
    assert summary["providers"]["acme"]["count"] == 6 and (out / "dataset.json").exists()


# -- audit fixes: --force safety, opted-out tenants, kind, near-dedup, JSON on refusal, distill terms checks ----
def _small_project(folder: Path, raws: list[CaptureRaw], config_extra: str = "") -> Path:
    """A config + SQLite store holding `raws` (captured and metered); returns the config path."""
    config = folder / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///insource.db"\n' + config_extra)
    store = Store(folder / "insource.db")
    rows: list[tuple[str, dict[str, Any], bool]] = []
    for raw in raws:
        rows += process_capture(raw)
        if raw.consent:
            rows.append(("usage", _usage(raw), False))
    store.write_batch(rows)
    store.close()
    return config


def run(config: Path, *args: str) -> Any:
    return runner.invoke(app, [*args, "--config", str(config)])


def _label_raws(n: int, task: str = "small", **kw: Any) -> list[CaptureRaw]:
    """`n` Banking77 messages answered with their intent; every third answer padded with a newline/tab."""
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    random.Random(11).shuffle(rows)
    out = []
    for i, row in enumerate(rows[:n]):
        label = row["category"] + ("\n" if i % 3 == 0 else "\t " if i % 3 == 1 else "")
        out.append(_raw(i, BASE_TS + i, row["text"], label, "local", "self-hosted", "Classify.", task=task, **kw))
    return out


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


def test_json_is_printed_when_every_example_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    result = cli(corpus, "dataset", "build", "--task", "gemini-only", "--out", str(out), "--json")
    assert result.exit_code == 3
    summary = json.loads(result.stdout)  # exactly one JSON object
    assert summary["counts"] == {"train": 0, "val": 0, "test": 0} and summary["providers"] == {}
    assert summary["out"] == str(out) and summary["task"] == "gemini-only"
    assert summary["refused"]["google"]["count"] == 6 and "compete" in summary["refused"]["google"]["clause"]
    assert "refused for --purpose train" in result.stderr and not out.exists()


def test_provider_without_terms_is_not_trainable(tmp_path: Path) -> None:
    from insource.config import load_config

    config = tmp_path / "insource.toml"
    config.write_text('[providers.proxy]\nkind = "openai"\nbase_url = "http://10.0.0.7:8000/v1"\n')
    terms = load_config(config).providers["proxy"].terms
    assert terms == "undeclared"
    raws = [_raw(k, BASE_TS + k, f"q {WORDS[k % 10]} {k}", "card_arrival", "proxy", terms, "S") for k in range(8)]
    config = _small_project(tmp_path, raws)
    result = run(config, "dataset", "build", "--task", TASK, "--out", str(tmp_path / "ds"), "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["refused"]["proxy"]["category"] == "none"
    assert "declares no `terms`" in " ".join(result.stderr.split())


# -- what distill checks: the terms recorded per example, not just the manifest's purpose --------------------
def _loaded(path: Path) -> Any:
    from insource.distill.dataset import load_dataset

    return load_dataset(path)


def test_internal_carve_out_trains_a_classifier_never_a_lora_student(corpus: Corpus, tmp_path: Path) -> None:
    from insource.distill.dataset import check_trainable

    out = tmp_path / "internal"
    assert build(corpus, out, "--allow-internal").exit_code == 0
    check_trainable(_loaded(out), TASK, classifier=True)  # the logged carve-out: internal classifier only
    with pytest.raises(NotReady) as err:
        check_trainable(_loaded(out), TASK, classifier=False)
    message = " ".join(str(err.value).split())
    assert "provider 'openai' under terms profile 'openai' [internal]" in message
    assert "generative (LoRA)" in message and "compete with OpenAI" in message
    result = runner.invoke(app, ["distill", "--task", TASK, "--student", "lora", "--dataset", str(out), "--config",
                                 str(corpus.config)])  # fmt: skip
    assert result.exit_code != 0 and "[internal]" in result.stderr and "Traceback" not in result.stderr


def test_hand_edited_manifest_cannot_launder_eval_data(corpus: Corpus, tmp_path: Path) -> None:
    from insource.distill.dataset import check_trainable

    out = tmp_path / "eval"
    assert build(corpus, out, "--purpose", "eval").exit_code == 0
    manifest = json.loads((out / "dataset.json").read_text())
    manifest.update(purpose="train", training_allowed=True, refused={}, carve_out={"allow_internal": True})
    manifest["terms"] = {name: {**t, "category": "any"} for name, t in manifest["terms"].items()}
    manifest["terms_categories"] = {"any": sum(manifest["counts"].values())}
    (out / "dataset.json").write_text(json.dumps(manifest))
    for classifier in (True, False):
        with pytest.raises(NotReady) as err:
            check_trainable(_loaded(out), TASK, classifier=classifier)
        message = " ".join(str(err.value).split())
        assert "provider 'anthropic' under terms profile 'anthropic' [none]" in message
        assert "train competing AI models" in message
    # an older dataset without per-example categories: the shipped profile of each example's terms decides
    for name in ("train", "val", "test"):
        path = out / f"{name}.examples.jsonl"
        rows = [{k: v for k, v in r.items() if k != "terms_category"} for r in _read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest["terms"] = {}
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(NotReady, match="'anthropic' \\[none\\]"):
        check_trainable(_loaded(out), TASK, classifier=True)
