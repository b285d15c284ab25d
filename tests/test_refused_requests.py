"""Refused requests are not spend: a request insource refuses itself (rate limit, budget, invalid request: a 4xx
before any upstream call) is counted as `refused` apart from `requests` in `spend` and `tasks`, text and JSON,
and never shows up as a row with a blank `served_by`. Driven through a real `insource serve` and the CLI."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from tests.conftest import Gateway, run_cli

TASK = "refusal-check"


def _send(gateway: Gateway, key: str, messages: list[dict[str, str]]) -> int:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, metadata={"task": TASK})  # type: ignore[arg-type]
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def _json(gateway: Gateway, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(gateway.cli(*args, "--json").stdout)
    return rows


def _text(gateway: Gateway, *args: str) -> str:
    wide = {"COLUMNS": "200"}  # how tables fit 80 columns is another test's business
    return run_cli(*args, "--config", str(gateway.config), env=wide).stdout


@pytest.fixture(scope="module")
def refusals(gateway: Gateway) -> Gateway:
    """Tenant `refusals`: 2 answered, 1 invalid, 1 rate limited; tenant `thrifty`: 1 refused by its budget."""
    limited = gateway.key("refusals", rpm=2)["key"]
    hello = [{"role": "user", "content": "hello"}]
    statuses = [
        _send(gateway, limited, hello),
        _send(gateway, limited, []),  # invalid: no messages
        _send(gateway, limited, hello),
        _send(gateway, limited, hello),  # the third request of the minute
    ]
    statuses.append(_send(gateway, gateway.key("thrifty")["key"], hello))  # the tenant's budget is ~0
    assert statuses == [200, 400, 200, 429, 429]
    gateway.usage_rows("task=?", (TASK,), wait_for=5)
    return gateway


def test_spend_counts_refused_requests_apart(refusals: Gateway) -> None:
    tenants = {r["tenant"]: r for r in _json(refusals, "spend")}
    assert (tenants["refusals"]["requests"], tenants["refusals"]["refused"]) == (2, 2)
    assert tenants["thrifty"]["refused"] >= 1 and tenants["thrifty"]["cost_usd"] == 0
    (task,) = [r for r in _json(refusals, "spend", "--by", "task") if r["task"] == TASK]
    assert (task["requests"], task["refused"]) == (2, 3)
    servers = _json(refusals, "spend", "--by", "served_by")
    assert all(r["served_by"] for r in servers)  # no row with a blank served_by
    refused_by = {r["served_by"]: r["refused"] for r in servers if r["refused"]}
    assert list(refused_by) == ["insource"] and refused_by["insource"] >= 3
    assert all(isinstance(r["refused"], int) for r in servers)
    assert "refused" in _text(refusals, "spend", "--by", "task")


def test_tasks_count_refused_requests_apart(refusals: Gateway) -> None:
    (row,) = [r for r in _json(refusals, "tasks") if r["task"] == TASK]
    assert (row["requests"], row["refused"]) == (2, 3)
    assert "refused" in _text(refusals, "tasks")
