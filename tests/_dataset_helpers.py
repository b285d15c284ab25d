"""Shared helpers for the dataset builder tests (tests/test_dataset*.py): a Banking77 traffic corpus captured
through process_capture + the batched writer, small hand-made projects, and the CLI runners."""

from __future__ import annotations

import csv
import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.cli import _register, app
from insource.store import Store
from insource.store.writer import BatchWriter

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "banking77"
needs_banking77 = pytest.mark.skipif(not (DATA / "train.csv").exists(), reason="../shared/data/banking77 not present")

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


def build_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The `corpus` fixture of each dataset test module (module scope: built once per module)."""
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
