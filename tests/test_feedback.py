"""Feedback (`POST /v1/feedback`, `insource feedback list`, `dataset build --feedback`) through a real
`insource serve`, the official openai SDK, httpx and the real CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, free_port, gateway_config, start_gateway, stop_gateway

from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle


def _client(gateway: Gateway, key: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)


def _ask(client: openai.OpenAI, text: str, task: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], extra_headers={"X-Insource-Task": task}
    )
    rid = raw.headers["x-request-id"]
    assert rid
    return rid


def _post(gateway: Gateway, key: dict[str, str] | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key['key']}"} if key else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(gateway.base_url + "/feedback", content=content, headers=headers, timeout=10)


def _listed(gateway: Gateway, task: str) -> list[dict[str, Any]]:
    out = gateway.cli("feedback", "list", "--task", task, "--json").stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_feedback_from_another_key_of_the_tenant_is_stored_and_listed(gateway: Gateway) -> None:
    task = f"fb-{uuid.uuid4().hex[:8]}"
    asker, other = gateway.key("fbco"), gateway.key("fbco")
    rid = _ask(_client(gateway, asker), "What is the capital of France?", task)
    # right after the answer (its usage record may still be queued in the writer), with the SDK itself
    reply = _client(gateway, other).post(
        "/feedback",
        body={"request_id": rid, "score": -0.5, "label": "wrong", "correction": "Paris.", "comment": "meh"},
        cast_to=httpx.Response,
    )
    assert reply.status_code == 200
    assert reply.headers["x-request-id"]
    created = reply.json()
    assert set(created) == {"id", "request_id"} and created["request_id"] == rid
    rows = _listed(gateway, task)
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == {"id", "request_id", "task", "score", "label", "correction", "comment", "created_at"}
    assert (row["id"], row["request_id"], row["task"]) == (created["id"], rid, task)
    assert (row["score"], row["label"], row["correction"], row["comment"]) == (-0.5, "wrong", "Paris.", "meh")
    assert row["created_at"].endswith("Z")
    csv = gateway.cli("feedback", "list", "--task", task, "--csv").stdout.splitlines()
    assert csv[0] == "id,request_id,task,score,label,correction,comment,created_at" and len(csv) == 2
    table = gateway.cli("feedback", "list", "--task", task).stdout
    assert "Paris." in table and "wrong" in table


def test_feedback_on_another_tenants_request_is_not_found(gateway: Gateway) -> None:
    task = f"fb-{uuid.uuid4().hex[:8]}"
    rid = _ask(_client(gateway, gateway.key("fbowner")), "Hello there", task)
    foreign = _post(gateway, gateway.key("fbintruder"), {"request_id": rid, "score": 1})
    unknown = _post(gateway, gateway.key("fbowner"), {"request_id": "req_" + "0" * 32, "score": 1})
    for response in (foreign, unknown):
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "request_id"
    assert foreign.json()["error"]["message"].replace(rid, "ID") == unknown.json()["error"]["message"].replace(
        "req_" + "0" * 32, "ID"
    )  # exactly as if the request did not exist
    assert _listed(gateway, task) == []
    with pytest.raises(openai.NotFoundError):
        _client(gateway, gateway.key("fbintruder")).post(
            "/feedback", body={"request_id": rid, "label": "x"}, cast_to=httpx.Response
        )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"score": 1}, "request_id"),
        ({"request_id": "", "score": 1}, "request_id"),
        ({"request_id": 12, "score": 1}, "request_id"),
        ({"request_id": "RID", "score": 1.5}, "score"),
        ({"request_id": "RID", "score": -2}, "score"),
        ({"request_id": "RID", "score": "good"}, "score"),
        ({"request_id": "RID", "score": True}, "score"),
        ({"request_id": "RID", "label": 3}, "label"),
        ({"request_id": "RID", "correction": ["a"]}, "correction"),
        ({"request_id": "RID", "comment": "only a comment"}, "score"),
        ({"request_id": "RID", "score": 1, "rating": 5}, "rating"),
        ([1, 2], None),
        (b"{not json", None),
    ],
)
def test_bad_feedback_is_a_400(gateway: Gateway, body: Any, param: str | None) -> None:
    key = gateway.key("fbbad")
    rid = _ask(_client(gateway, key), "Bad feedback test", "fb-bad")
    if isinstance(body, dict) and body.get("request_id") == "RID":
        body = {**body, "request_id": rid}
    response = _post(gateway, key, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_the_sdk_gets_a_400_for_a_score_out_of_range_and_a_404_for_an_unknown_id(gateway: Gateway) -> None:
    key = gateway.key("fbsdk")
    client = _client(gateway, key)
    rid = _ask(client, "Scored out of range", "fb-sdk")
    for score in (1.0001, -1.5, 2, -3):
        with pytest.raises(openai.BadRequestError) as bad:
            client.post("/feedback", body={"request_id": rid, "score": score}, cast_to=httpx.Response)
        assert bad.value.status_code == 400 and "between -1 and 1" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.post("/feedback", body={"request_id": "req_never_was", "score": 1}, cast_to=httpx.Response)
    assert missing.value.code == "request_not_found"
    for score in (-1, 1, 0):  # the bounds are in
        reply = client.post("/feedback", body={"request_id": rid, "score": score}, cast_to=httpx.Response)
        assert reply.status_code == 200 and reply.json()["request_id"] == rid


def test_feedback_needs_a_key(gateway: Gateway) -> None:
    response = _post(gateway, None, {"request_id": "req_x", "score": 1})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_corrections_and_comments_are_redacted_before_storage(gateway: Gateway) -> None:
    task = f"fb-{uuid.uuid4().hex[:8]}"
    key = gateway.key("fbredact")
    rid = _ask(_client(gateway, key), "Who should I write to?", task)
    body = {"request_id": rid, "correction": "Write to jane.doe@example.com", "comment": "call +1 415 555 0132"}
    assert _post(gateway, key, body).status_code == 200
    row = _listed(gateway, task)[0]
    assert "jane.doe@example.com" not in row["correction"] and "[EMAIL]" in row["correction"]
    assert "555 0132" not in row["comment"]
    assert "jane.doe" not in gateway.config.with_name("insource.db").read_bytes().decode("latin-1")


def _dataset(gateway: Gateway, task: str, out: Path, *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gateway.cli("dataset", "build", "--task", task, "--out", str(out), "--split", "random", *extra)
    manifest = json.loads((out / "dataset.json").read_text())
    examples = [
        json.loads(line)
        for name in ("train", "val", "test")
        for line in (out / f"{name}.jsonl").read_text().splitlines()
        if line
    ]
    return manifest, examples


def _answers(examples: list[dict[str, Any]]) -> dict[str, str]:
    """question → the target answer of its example."""
    return {ex["messages"][-2]["content"]: ex["messages"][-1]["content"] for ex in examples}


def test_dataset_build_uses_feedback(gateway: Gateway, tmp_path: Path) -> None:
    task = f"fb-{uuid.uuid4().hex[:8]}"
    key = gateway.key("fbdata")
    client = _client(gateway, key)
    questions = [f"Question number {i} about topic {c}" for i, c in enumerate("abcdefghij")]
    rids = [_ask(client, q, task) for q in questions]
    assert _post(gateway, key, {"request_id": rids[0], "score": -1}).status_code == 200
    assert _post(gateway, key, {"request_id": rids[1], "score": -1, "correction": "  The right answer.  "}).is_success
    assert _post(gateway, key, {"request_id": rids[2], "score": 1, "label": "good"}).status_code == 200
    gateway.usage_rows("task = ?", (task,), wait_for=len(questions))

    manifest, examples = _dataset(gateway, task, tmp_path / "plain")
    assert len(examples) == 10 and "feedback" not in manifest

    manifest, examples = _dataset(gateway, task, tmp_path / "neg", "--feedback", "exclude-negative")
    answers = _answers(examples)
    assert len(examples) == 8 and questions[0] not in answers and questions[1] not in answers
    fb = manifest["feedback"]
    assert fb["mode"] == "exclude-negative" and fb["dropped_negative"] == 2 and fb["corrected"] == 0
    assert fb["examples_with_feedback"] == 3

    manifest, examples = _dataset(gateway, task, tmp_path / "corr", "--feedback", "use-corrections")
    answers = _answers(examples)
    assert len(examples) == 9 and questions[0] not in answers
    assert answers[questions[1]] == "The right answer."
    assert answers[questions[2]].startswith("This is a simulated reply")
    fb = manifest["feedback"]
    assert (fb["mode"], fb["dropped_negative"], fb["corrected"]) == ("use-corrections", 1, 1)
    assert len(fb["corrected_ids"]) == 1 and len(fb["dropped_ids"]) == 1

    bad = gateway.cli(
        "dataset", "build", "--task", task, "--out", str(tmp_path / "x"), "--feedback", "all", check=False
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_dataset_build_says_when_feedback_leaves_nothing(gateway: Gateway, tmp_path: Path) -> None:
    task = f"fb-{uuid.uuid4().hex[:8]}"
    key = gateway.key("fbnone")
    rid = _ask(_client(gateway, key), "A question answered badly", task)
    assert _post(gateway, key, {"request_id": rid, "score": -0.2}).status_code == 200
    gateway.usage_rows("task = ?", (task,), wait_for=1)
    out = tmp_path / "none"
    result = gateway.cli(
        "dataset", "build", "--task", task, "--out", str(out), "--feedback", "exclude-negative", check=False
    )
    assert result.returncode != 0 and "left no example" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_feedback_right_after_the_answer_with_two_workers(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    """The request may have been answered (and its record queued) by the other worker."""
    config = tmp_path / "insource.toml"
    config.write_text(gateway_config(upstream[1].url, f"http://127.0.0.1:{free_port()}"))
    env = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY, "TEST_ADMIN_KEY": "adm-1", "WRONG_UPSTREAM_KEY": "sk-wrong-1"}
    gw = start_gateway(config, env, workers=2)
    try:
        key = gw.key("fbworkers")
        client = _client(gw, key)
        task = f"fb-{uuid.uuid4().hex[:8]}"
        statuses = []
        with httpx.Client(timeout=10) as http:  # new connections: the two workers share the requests
            for i in range(12):
                rid = _ask(client, f"Question {i} for two workers", task)
                reply = http.post(
                    gw.base_url + "/feedback",
                    json={"request_id": rid, "score": 1},
                    headers={"Authorization": f"Bearer {key['key']}", "Connection": "close"},
                )
                statuses.append(reply.status_code)
        assert statuses == [200] * 12
        assert len(_listed(gw, task)) == 12
    finally:
        stop_gateway(gw)
