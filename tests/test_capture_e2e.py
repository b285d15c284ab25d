"""Capture end to end: Banking77 replayed through a real `insource serve`, then a dataset built from it."""

from __future__ import annotations

import asyncio
import csv
import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import SHARED_DATA, Gateway, start_gateway, stop_gateway

from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import run_server

BANKING = SHARED_DATA / "banking77"
CANARIES = ["4111 1111 1111 1111", "canary.person@example.com", "sk-canaryABCDEF1234567890abcdXYZ", "+44 20 7946 0958"]
pytestmark = pytest.mark.skipif(not (BANKING / "train.csv").exists(), reason="../shared/data/banking77 is absent")


def load_banking(n: int) -> list[tuple[str, str]]:
    with (BANKING / "train.csv").open(newline="") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    random.Random(3).shuffle(rows)
    return rows[:n]


def system_prompt() -> str:
    labels = json.loads((BANKING / "categories.json").read_text())
    return (
        "Classify the banking customer's message into one intent. Intents: "
        + ", ".join(labels)
        + ". Answer with the intent only."
    )


class GoldTeacher:
    def __init__(self) -> None:
        self.gold: dict[str, str] = {}

    def __call__(self, model: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return self.gold.get(str(messages[-1]["content"]), "unknown")


async def replay(gw: Gateway, key: str, model: str, texts: list[str]) -> None:
    limit = asyncio.Semaphore(16)
    prompt = system_prompt()
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as c:

        async def one(text: str) -> None:
            async with limit:
                await c.chat.completions.create(
                    model=model,
                    metadata={"task": "banking77"},
                    messages=[{"role": "system", "content": prompt}, {"role": "user", "content": text}],
                )

        await asyncio.gather(*(one(t) for t in texts))


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, int]]]:
    folder = tmp_path_factory.mktemp("capture")
    teacher = GoldTeacher()
    pairs = load_banking(1200)
    secret_msgs = [
        f"my card {CANARIES[0]} was charged twice, mail {CANARIES[1]} or call {CANARIES[3]}",
        f"I pasted my key {CANARIES[2]} by mistake, is my account safe?",
    ]
    teacher.gold.update(pairs)
    teacher.gold.update({m: "compromised_card" for m in secret_msgs})
    handle = run_server(FakeUpstream(responder=teacher))
    config = folder / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = "{handle.url}/v1"\nterms = "self-hosted"\n'
        f'[providers.az]\nkind = "openai"\nbase_url = "{handle.url}/v1"\nterms = "azure-openai"\n'
        f'[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n'
        f'[models."az-mini"]\ntargets = ["az:gpt-4o-mini"]\n'
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.6 }\n"
    )
    gw = start_gateway(config)
    key = gw.key("bank")["key"]
    texts = [t for t, _ in pairs[:1000]]
    asyncio.run(replay(gw, key, "gpt-4o-mini", texts[:500]))
    asyncio.run(replay(gw, key, "gpt-4o-mini", texts[:40] + secret_msgs + texts[500:]))  # 40 exact repeats
    asyncio.run(replay(gw, key, "az-mini", [t for t, _ in pairs[1000:1100]]))
    gw.usage_rows(wait_for=1142)
    time.sleep(0.5)
    yield gw, {"unique_self_hosted": 1002, "azure": 100}
    stop_gateway(gw)
    handle.stop()
    shutil.rmtree(folder, ignore_errors=True)


def build(gw: Gateway, out: Path, *extra: str, check: bool = True) -> Any:
    result = gw.cli("dataset", "build", "--task", "banking77", "--out", str(out), "--json", *extra, check=check)
    return json.loads(result.stdout) if result.returncode == 0 else result


def read_examples(folder: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / f"{split}.examples.jsonl").read_text().splitlines() if line]


def test_train_dataset_counts_splits_dedup_provenance(captured: tuple[Gateway, dict[str, int]], tmp_path: Path) -> None:
    gw, expect = captured
    out = tmp_path / "train"
    result = build(gw, out, "--purpose", "train")
    assert set(result) >= {"out", "task", "counts", "refused", "providers"}
    counts = result["counts"]
    total = counts["train"] + counts["val"] + counts["test"]
    assert expect["unique_self_hosted"] * 0.97 <= total <= expect["unique_self_hosted"]  # repeats removed
    assert counts["train"] > counts["test"] > 0
    refused = result["refused"]
    assert sum(r["count"] for r in refused.values()) == expect["azure"]
    assert any("az" in name for name in refused)
    train, test = read_examples(out, "train"), read_examples(out, "test")
    assert max(e["ts"] for e in train) < min(e["ts"] for e in test)  # evaluation is on later traffic
    assert {e["provider"] for e in train} == {"teacher"} and {e["terms"] for e in train} == {"self-hosted"}
    assert all(e["output"] and e["input"] and "Classify" not in e["input"] for e in train[:50])
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["counts"] == counts and manifest["kind"] == "classification"
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][-1]["role"] == "assistant"


def test_terms_guard_refuses_train_names_clause_allows_eval(
    captured: tuple[Gateway, dict[str, int]], tmp_path: Path
) -> None:
    gw, expect = captured
    evaluation = build(gw, tmp_path / "eval", "--purpose", "eval")
    assert evaluation["refused"] == {}
    total = sum(evaluation["counts"].values())
    assert total > expect["unique_self_hosted"]
    refused = build(gw, tmp_path / "t2", "--purpose", "train")["refused"]
    clause = next(iter(refused.values()))["clause"]
    assert clause and len(clause) > 10


def test_out_folder_not_empty_is_refused(captured: tuple[Gateway, dict[str, int]], tmp_path: Path) -> None:
    gw, _ = captured
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = build(gw, out, check=False)
    assert result.returncode != 0 and (out / "keep.txt").read_text() == "mine"
    assert isinstance(build(gw, out, "--force"), dict)  # --force replaces the folder, atomically
    assert not (out / "keep.txt").exists() and (out / "dataset.json").exists()
    previous = tmp_path / "previous"
    build(gw, previous)
    assert isinstance(build(gw, previous, "--force"), dict) and (previous / "dataset.json").exists()
    home = gw.config.parent  # holds the config, the store and the registry
    forced = build(gw, home, "--force", check=False)
    assert forced.returncode != 0 and "the store, the config or the model registry" in forced.stderr
    assert gw.config.exists() and (home / "insource.db").exists()
    unknown = gw.cli("dataset", "build", "--task", "nope", "--out", str(tmp_path / "n"), check=False)
    assert unknown.returncode != 0 and not (tmp_path / "n").exists()


def test_canaries_never_stored_or_exported(captured: tuple[Gateway, dict[str, int]], tmp_path: Path) -> None:
    gw, _ = captured
    out = tmp_path / "scan"
    build(gw, out, "--purpose", "eval")
    db = gw.config.parent / "insource.db"
    blobs = [p.read_bytes() for p in gw.config.parent.rglob("*") if p.is_file() and p.suffix != ".log"]
    blobs += [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert db.exists() and blobs
    for canary in CANARIES:
        for variant in {canary, canary.replace(" ", "")}:
            assert all(variant.encode() not in blob for blob in blobs), canary
    exported = "".join(p.read_text() for p in out.glob("*.examples.jsonl"))
    assert "[CARD]" in exported or "[REDACTED" in exported


def test_tasks_json(captured: tuple[Gateway, dict[str, int]]) -> None:
    gw, _ = captured
    rows = json.loads(gw.cli("tasks", "--json").stdout)
    row = next(r for r in rows if r["task"] == "banking77")
    assert set(row) >= {"task", "requests", "cost_usd", "distinct_outputs", "kind"}
    assert row["kind"] == "classification" and row["requests"] >= 1142 and 50 <= row["distinct_outputs"] <= 78


def test_key_opted_out_of_capture_is_never_captured(captured: tuple[Gateway, dict[str, int]]) -> None:
    gw, _ = captured
    created = json.loads(gw.cli("keys", "create", "--tenant", "private", "--no-capture", "--json").stdout)
    secret_text = "opted-out message about my pin 4417"
    c = openai.OpenAI(base_url=gw.base_url, api_key=created["key"], max_retries=0)
    c.chat.completions.create(
        model="gpt-4o-mini", metadata={"task": "banking77"}, messages=[{"role": "user", "content": secret_text}]
    )
    assert gw.usage_rows("key_id=?", (created["id"],), wait_for=1)  # metered, but not captured
    time.sleep(0.3)
    stored = b"".join(f.read_bytes() for f in gw.config.parent.glob("insource.db*"))
    assert stored and secret_text.encode() not in stored
