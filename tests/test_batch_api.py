"""The Batch API through a real `insource serve`, the official openai SDK (`client.files`, `client.batches`) and
the fake upstream's files and batches: passed through, metered once at the batch price, captured."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, free_port, gateway_config, start_gateway, stop_gateway

from insource.config import Config
from insource.metering.prices import batch_price, resolve_prices
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle

BATCH_IN, BATCH_OUT = 0.075, 0.30  # gpt-4o-mini's config price (0.15 / 0.60) halved: no batch price configured


def _client(gateway: Gateway, key: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)


def _lines(n: int, model: str = "gpt-4o-mini", task: str | None = None) -> bytes:
    rows = []
    for i in range(n):
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"Batch question {i}?"}]}
        if task is not None and i == 0:
            body["metadata"] = {"task": task + "-first"}
        rows.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _run_batch(client: openai.OpenAI, data: bytes, task: str) -> tuple[Any, Any]:
    uploaded = client.files.create(file=("questions.jsonl", data), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "search"},
        extra_headers={"X-Insource-Task": task},
    )
    return uploaded, created


def test_a_batch_is_passed_through_metered_once_at_the_batch_price_and_captured(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    task = f"batch-{uuid.uuid4().hex[:8]}"
    client = _client(gateway, gateway.key("batcher"))
    fake.batches.fail_custom_ids = {"r3"}
    uploaded, created = _run_batch(client, _lines(4, task=task), task)
    assert uploaded.purpose == "batch" and uploaded.filename == "questions.jsonl"
    assert created.status == "validating" and created.metadata == {"team": "search"}
    sent = fake.batches.files[uploaded.id]["data"].decode().splitlines()
    assert all(json.loads(line)["body"]["model"] == "gpt-4o-mini" for line in sent)
    assert "metadata" not in json.loads(sent[0])["body"]  # metadata.task is insource's
    assert gateway.usage_rows("task LIKE ?", (task + "%",)) == []  # nothing metered before it finishes

    done = client.batches.retrieve(created.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r2"]
    client.batches.retrieve(created.id)  # seen again: not metered twice

    rows = gateway.usage_rows("endpoint = 'batch' AND task LIKE ?", (task + "%",))
    assert len(rows) == 4
    by_request = {r["request_id"]: r for r in rows}
    for line in output:
        row = by_request[line["id"]]
        usage = line["response"]["body"]["usage"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        expected = (usage["prompt_tokens"] * BATCH_IN + usage["completion_tokens"] * BATCH_OUT) / 1e6
        assert row["cost_usd"] == pytest.approx(expected) and row["cost_usd"] > 0
        assert row["served_by"] == "local:gpt-4o-mini" and row["model"] == "gpt-4o-mini" and row["status"] == 200
    assert {r["task"] for r in rows} == {task, task + "-first"}
    failed = [r for r in rows if r["status"] != 200]
    assert len(failed) == 1 and failed[0]["cost_usd"] == 0

    spend = json.loads(gateway.cli("spend", "--by", "task", "--json").stdout)
    ours = [r for r in spend if str(r.get("task", "")).startswith(task)]
    assert sum(r["cost_usd"] for r in ours) == pytest.approx(sum(r["cost_usd"] for r in rows))
    captured = json.loads(gateway.cli("capture", "search", "--task", task, "--contains", "Batch", "--json").stdout)
    assert len(captured) == 2 and all(c["output"].startswith("This is a simulated reply") for c in captured)


def test_another_tenant_cannot_see_files_or_batches(gateway: Gateway, fake: FakeUpstream) -> None:
    owner = _client(gateway, gateway.key("batchowner"))
    uploaded, created = _run_batch(owner, _lines(1), "batch-private")
    done = owner.batches.retrieve(created.id)
    intruder = _client(gateway, gateway.key("batchintruder"))
    for call in (
        lambda: intruder.batches.retrieve(created.id),
        lambda: intruder.batches.cancel(created.id),
        lambda: intruder.files.retrieve(uploaded.id),
        lambda: intruder.files.content(done.output_file_id),
        lambda: intruder.files.delete(uploaded.id),
        lambda: intruder.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [b.id for b in intruder.batches.list()] == []
    assert intruder.files.list().data == []
    assert created.id in [b.id for b in owner.batches.list()]
    assert uploaded.id in [f.id for f in owner.files.list()]
    assert owner.files.delete(uploaded.id).deleted


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"{not json\n", "Line 1"),
        (_lines(1) + b'{"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n', "Line 2"),
        (_lines(2).replace(b'"r1"', b'"r0"'), "duplicate custom_id"),
        (_lines(1, model="no-such-model"), "no-such-model"),
        (_lines(1, model="azure-mini"), "Batch API"),
        (_lines(1).replace(b'"POST"', b'"GET"'), "method"),
    ],
)
def test_a_bad_batch_file_is_a_400_naming_the_line(
    gateway: Gateway, fake: FakeUpstream, data: bytes, needle: str
) -> None:
    client = _client(gateway, gateway.key("batchbad"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", data), purpose="batch")
    assert needle in str(caught.value)
    assert fake.batches.files == {}  # nothing went upstream


def test_only_batch_files_and_matching_endpoints(gateway: Gateway, fake: FakeUpstream) -> None:
    client = _client(gateway, gateway.key("batchpurpose"))
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", _lines(1)), purpose="fine-tune")
    uploaded = client.files.create(file=("q.jsonl", _lines(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_doesnotexist")


def test_batch_prices_from_config_and_default_half() -> None:
    cfg = Config.model_validate(
        {
            "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {
                "explicit": {
                    "targets": ["p:m"],
                    "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0, "batch_input_per_mtok": 0.4},
                },
                "table": {"targets": ["p:gpt-4o"]},
            },
        }
    )
    prices = resolve_prices(cfg)
    explicit = batch_price(prices["explicit"])
    assert (explicit.input_per_mtok, explicit.output_per_mtok) == (0.4, 2.0)
    table = batch_price(prices["table"])
    assert (table.input_per_mtok, table.output_per_mtok, table.cached_input_per_mtok) == (1.25, 5.0, 0.625)


def test_a_batch_nobody_retrieves_is_metered_by_the_poller(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    config = tmp_path / "insource.toml"
    text = gateway_config(upstream[1].url, f"http://127.0.0.1:{free_port()}") + "\n[batch]\npoll_s = 0.2\n"
    config.write_text(text)
    env = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY, "TEST_ADMIN_KEY": "adm-1", "WRONG_UPSTREAM_KEY": "sk-wrong-1"}
    gw = start_gateway(config, env)
    try:
        client = _client(gw, gw.key("polled"))
        _, created = _run_batch(client, _lines(3), "batch-polled")
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(rows) < 3:
            rows = gw.usage_rows("endpoint = 'batch' AND task = ?", ("batch-polled",))
            time.sleep(0.1)
        assert len(rows) == 3 and all(r["cost_usd"] > 0 for r in rows)
        assert client.batches.retrieve(created.id).status == "completed"
        time.sleep(0.5)  # more polls, and the retrieve: nothing metered twice
        assert len(gw.usage_rows("endpoint = 'batch' AND task = ?", ("batch-polled",))) == 3
    finally:
        stop_gateway(gw)


def test_an_embeddings_batch_is_metered_on_its_input_tokens(gateway: Gateway, fake: FakeUpstream) -> None:
    client = _client(gateway, gateway.key("batchembed"))
    task = f"batch-emb-{uuid.uuid4().hex[:8]}"
    rows = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": f"text number {i}"}}
        for i in range(2)
    ]  # fmt: skip
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    uploaded = client.files.create(file=("emb.jsonl", data), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        extra_headers={"X-Insource-Task": task},
    )
    assert client.batches.retrieve(created.id).status == "completed"
    records = gateway.usage_rows("endpoint = 'batch' AND task = ?", (task,))
    assert len(records) == 2 and all(r["prompt_tokens"] > 0 and r["completion_tokens"] == 0 for r in records)
