"""The opportunity finder end to end: mixed, UNTAGGED traffic (Banking77 with a system prompt, FrugalGPT headlines
`Q: ...\\nA:`, raw GSM8K questions) replayed through a real `insource serve`; the finder must find the three
templates and rank the two label-like ones as distillable; `tasks assign` + `dataset build` + `distill` then work
on one of them, and the gateway tags new requests that fit the assigned template."""

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
from tests.conftest import SHARED_DATA, Gateway, make_home, start_gateway, stop_gateway

from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import run_server
from insource.testing.table_teacher import TableTeacher

BANKING = SHARED_DATA / "banking77"
HEADLINES = SHARED_DATA / "frugalgpt_headlines"
GSM8K = SHARED_DATA / "routellm" / "gsm8k_responses.csv"
pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in (BANKING / "train.csv", HEADLINES / "train.csv", GSM8K)),
    reason="../shared/data is absent",
)
SYSTEM = "Classify the banking customer's message into one intent. Answer with the intent only."


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def traffic() -> tuple[dict[str, list[list[dict[str, str]]]], dict[str, str]]:
    """Prompts per source (as chat messages) and the teacher's answer per user text."""
    rng = random.Random(7)
    banking = _rows(BANKING / "train.csv")
    headlines = _rows(HEADLINES / "train.csv")
    gsm = _rows(GSM8K)
    for rows in (banking, headlines, gsm):
        rng.shuffle(rows)
    answers = {r[0]: r[1] for r in banking[:150]}
    answers.update({r[0]: r[1] for r in headlines[:150]})
    answers.update({r[0]: r[4] for r in gsm[:50]})
    prompts = {
        "banking": [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r[0]}] for r in banking[:130]],
        "headlines": [[{"role": "user", "content": r[0]}] for r in headlines[:130]],
        "gsm8k": [[{"role": "user", "content": r[0]}] for r in gsm[:40]],
    }
    # repeated inputs: the teacher answers labels the same way, long answers differently
    prompts["banking"] += prompts["banking"][:10]
    prompts["gsm8k"] += prompts["gsm8k"][:10]
    return prompts, answers


async def replay(gw: Gateway, key: str, prompts: list[list[dict[str, str]]]) -> None:
    limit = asyncio.Semaphore(16)
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as client:

        async def one(messages: list[dict[str, str]]) -> None:
            async with limit:
                await client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]

        await asyncio.gather(*(one(m) for m in prompts))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> Iterator[tuple[Gateway, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("opportunities")
    prompts, answers = traffic()
    handle = run_server(FakeUpstream(responder=TableTeacher(answers)))
    config = make_home(folder, encoder_cache)
    config.write_text(
        config.read_text()
        + f'[providers.teacher]\nkind = "openai"\nbase_url = "{handle.url}/v1"\nterms = "self-hosted"\n'
        '[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n'
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.6 }\n"
    )
    gw = start_gateway(config)
    key = gw.key("app")["key"]
    mixed = prompts["banking"] + prompts["headlines"] + prompts["gsm8k"]
    random.Random(1).shuffle(mixed)
    asyncio.run(replay(gw, key, mixed))
    gw.usage_rows(wait_for=len(mixed))
    time.sleep(0.5)
    yield gw, {"key": key, "prompts": prompts, "total": len(mixed)}
    stop_gateway(gw)
    handle.stop()
    shutil.rmtree(folder, ignore_errors=True)


def opportunities(gw: Gateway) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(gw.cli("opportunities", "--json").stdout)
    return rows


def by_source(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for r in rows:
        if SYSTEM in r["template"]:
            found["banking"] = r
        elif r["template"].startswith("[user] Q: <*>"):
            found["headlines"] = r
        elif r["template"] == "[user] <*>":
            found["gsm8k"] = r
    return found


def test_finds_three_templates_and_ranks_label_like_ones_distillable(served: tuple[Gateway, dict[str, Any]]) -> None:
    gw, info = served
    rows = opportunities(gw)
    assert set(rows[0]) == {
        "template_id", "template", "task", "requests", "monthly_spend_usd", "kind", "labels", "score", "next",
    }  # fmt: skip
    found = by_source(rows)
    assert set(found) == {"banking", "headlines", "gsm8k"} and len(rows) == 3, [r["template"][:80] for r in rows]
    assert found["banking"]["requests"] == 140
    assert found["headlines"]["requests"] == 130
    assert found["headlines"]["template"] == "[user] Q: <*>\nA:"
    assert found["gsm8k"]["requests"] == 50
    assert sum(r["requests"] for r in rows) == info["total"]
    assert all(r["task"] is None for r in rows)
    assert found["banking"]["kind"] == found["headlines"]["kind"] == "classification"
    assert found["gsm8k"]["kind"] == "generation" and found["gsm8k"]["labels"] is None
    assert set(found["headlines"]["labels"]) <= {"up", "down", "none", "neutral"}
    assert {r["template_id"] for r in rows[:2]} == {found["banking"]["template_id"], found["headlines"]["template_id"]}
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert "tasks assign --template " + found["headlines"]["template_id"] in found["headlines"]["next"]
    assert "distill" in found["banking"]["next"] and "distill" not in found["gsm8k"]["next"]
    assert all(r["monthly_spend_usd"] > 0 for r in found.values())
    assert found["gsm8k"]["monthly_spend_usd"] > found["headlines"]["monthly_spend_usd"]  # long answers cost more
    again = by_source(opportunities(gw))
    assert {k: v["template_id"] for k, v in again.items()} == {k: v["template_id"] for k, v in found.items()}


def test_assign_build_distill_and_gateway_tags_new_requests(
    served: tuple[Gateway, dict[str, Any]], tmp_path: Path
) -> None:
    gw, info = served
    found = by_source(opportunities(gw))
    tid = found["headlines"]["template_id"]
    assigned = json.loads(gw.cli("tasks", "assign", "--template", tid, "--task", "gold", "--json").stdout)
    assert assigned == {"template_id": tid, "task": "gold", "tagged": 130}
    tasks = {t["task"]: t for t in json.loads(gw.cli("tasks", "--json").stdout)}
    assert tasks["gold"]["requests"] == 130 and tasks["gold"]["kind"] == "classification"
    # the raw-question template has no constant text: assigning it would tag everything, so it is refused
    refused = gw.cli("tasks", "assign", "--template", found["gsm8k"]["template_id"], "--task", "x", check=False)
    assert refused.returncode != 0 and "no constant text" in refused.stderr and "Traceback" not in refused.stderr
    unknown = gw.cli("tasks", "assign", "--template", "t_nope", "--task", "x", check=False)
    assert unknown.returncode != 0 and "unknown template" in unknown.stderr

    time.sleep(1.2)  # every worker reloads assignments within a second
    fresh = [[{"role": "user", "content": f"Q: Gold climbs {i}% as dollar slides\nA:"}] for i in range(5)]
    asyncio.run(replay(gw, info["key"], fresh + info["prompts"]["banking"][:3]))
    rows = gw.usage_rows("ts > ?", (time.time() - 30,), wait_for=info["total"] + 8)
    recent = rows[-8:]
    assert sorted(str(r["task"]) for r in recent) == ["None"] * 3 + ["gold"] * 5

    out = tmp_path / "gold"
    built = json.loads(gw.cli("dataset", "build", "--task", "gold", "--out", str(out), "--json").stdout)
    assert sum(built["counts"].values()) >= 100
    result = json.loads(gw.cli("distill", "--task", "gold", "--dataset", str(out), "--json").stdout)
    assert result["model"].startswith("gold@v")
