"""A request's facts are made once, from its arrival and its body (`service/request.py:Arrival.facts`): a
request refused for its task still records the model and the stream it asked for, and the caller's request id;
an answered one records who answered. Driven through a real `insource serve` and raw HTTP."""

from __future__ import annotations

import httpx
from tests.conftest import Gateway


def test_refused_for_its_task_keeps_model_stream_and_request_id(gateway: Gateway) -> None:
    key = gateway.key("facts")["key"]
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"task": "x" * 201},
    }
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": "facts-1"}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=headers, timeout=30)
    assert resp.status_code == 400 and resp.headers["x-request-id"] == "facts-1"
    (row,) = gateway.usage_rows("tenant = ?", ("facts",), wait_for=1)
    assert (row["model"], row["stream"], row["task"], row["status"]) == ("gpt-4o-mini", 1, None, 400)
    assert row["request_id"] == "facts-1" and row["id"] != "facts-1" and row["attempts"] == 0


def test_answered_request_records_its_target(gateway: Gateway) -> None:
    key = gateway.key("facts-ok")["key"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "t1"}}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, headers={"api-key": key}, timeout=30)
    assert resp.status_code == 200
    (row,) = gateway.usage_rows("tenant = ?", ("facts-ok",), wait_for=1)
    assert row["served_by"] == resp.headers["x-insource-served-by"] and row["attempts"] >= 1
    assert (row["model"], row["task"], row["stream"], row["endpoint"]) == ("gpt-4o-mini", "t1", 0, "chat")
    assert row["request_id"] == row["id"] == resp.headers["x-request-id"] and row["ttft_ms"] is not None


def test_request_ids_sort_by_time_and_stay_unique() -> None:
    """Ids the gateway makes go to the right edge of the store's id indexes (`bench/store_growth.py`): later ids
    sort after earlier ones, same shape as before (`req_` and 32 hex digits), no two alike."""
    import itertools
    import re
    import time

    from insource.service.request import new_request_id

    batches = []
    for _ in range(3):
        batches.append([new_request_id() for _ in range(2000)])
        time.sleep(0.002)
    ids = [i for batch in batches for i in batch]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    for earlier, later in itertools.pairwise(batches):
        assert max(earlier) < min(later)  # a later millisecond sorts after every id of an earlier one
    assert abs(int(ids[-1][4:16], 16) / 1000 - time.time()) < 60  # the prefix is the wall clock's milliseconds
