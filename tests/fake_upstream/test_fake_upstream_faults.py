"""FakeUpstream errors and injected faults (bad requests, fail_next, 429s, seeded error rate, delays, hangs,
token pacing, broken streams), through the official openai SDK."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from tests.fake_upstream.helpers import KEY, MSGS, chat, raw_post

from insource.testing import FakeUpstream

# ---------------------------------------------------------------- errors and faults


def test_invalid_requests(url: str, client: openai.OpenAI) -> None:
    r = raw_post(url, "/v1/chat/completions", {"model": "gpt-4o-mini"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "missing_required_parameter")
    assert error["type"] == "invalid_request_error"
    assert raw_post(url, "/v1/chat/completions", b"{not json").status_code == 400
    bad_role = {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}
    assert raw_post(url, "/v1/chat/completions", bad_role).json()["error"]["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, n=0)
    assert err.value.param == "n"
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-9", messages=MSGS)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="")
    unknown = raw_post(url, "/v1/nothing", {})
    assert unknown.status_code == 404 and "Invalid URL" in unknown.json()["error"]["message"]


def test_fail_next_and_custom_body(up: FakeUpstream, client: openai.OpenAI) -> None:
    up.fail_next(500, count=2)
    up.fail_next(503, body={"error": {"message": "custom", "type": "server_error", "param": None, "code": "x"}})
    assert up.pending_faults == 3
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as err:
            chat(client)
        assert err.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as err:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert err.value.status_code == 503 and err.value.code == "x" and "custom" in err.value.message
    assert chat(client).choices
    assert len(up.requests) == 4 and up.pending_faults == 0


def test_rate_limit_retry_after(up: FakeUpstream, url: str, client: openai.OpenAI) -> None:
    up.fail_next(429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as err:
        chat(client)
    assert err.value.response.headers["retry-after"] == "7" and err.value.code == "rate_limit_exceeded"
    up.fail_next(429, retry_after=0.3)
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=1) as retrying:
        t0 = time.perf_counter()
        r = chat(retrying)
        elapsed = time.perf_counter() - t0
    assert r.choices and len(up.requests) == 3 and 0.3 <= elapsed < 2.0


def test_error_rate_is_seeded(up: FakeUpstream, client: openai.OpenAI) -> None:
    def outcomes() -> list[bool]:
        up.error_rate, up.error_status = 0.3, 503
        out = []
        for _ in range(40):
            try:
                client.embeddings.create(model="text-embedding-3-small", input="x")
                out.append(True)
            except openai.InternalServerError as exc:
                assert exc.status_code == 503
                out.append(False)
        return out

    first = outcomes()
    up.reset()
    assert outcomes() == first and 4 <= first.count(False) <= 22


def test_delay_hang_and_timeouts(up: FakeUpstream, url: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=0.2) as quick:
        up.delay_s = 0.6
        t0 = time.perf_counter()
        with pytest.raises(openai.APITimeoutError):
            chat(quick)
        assert time.perf_counter() - t0 < 0.55
        up.delay_s = 0.1
        t0 = time.perf_counter()
        chat(quick)
        assert time.perf_counter() - t0 >= 0.1
        up.delay_s = 0.0
        up.hang = True
        with pytest.raises(openai.APITimeoutError):
            chat(quick)
    results: list[str] = []
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=5) as patient:

        def call() -> None:
            r = chat(patient)
            results.append(r.choices[0].message.content or "")

        before = len(up.requests)
        worker = threading.Thread(target=call)
        worker.start()
        assert up.wait_for_requests(before + 1, timeout=3)
        time.sleep(0.05)
        assert not results
        up.release()
        worker.join(3)
    assert len(results) == 1


def test_token_pacing_and_ttft(up: FakeUpstream, client: openai.OpenAI) -> None:
    up.delay_s, up.token_delay_s = 0.15, 0.02
    t0 = time.perf_counter()
    arrivals = []
    stream = chat(client, stream=True)
    for _ in stream:
        arrivals.append(time.perf_counter() - t0)
    assert arrivals[0] >= 0.15
    assert arrivals[-1] - arrivals[0] >= 0.02 * (len(arrivals) - 1) * 0.9
    assert arrivals[-1] < 0.15 + 0.02 * len(arrivals) + 0.5


def test_stream_break_drops_connection(up: FakeUpstream, client: openai.OpenAI) -> None:
    up.stream_break_after = 3
    got = 0
    with pytest.raises(openai.APIConnectionError):  # the SDK's wrapper for a peer that closed mid-body
        for _ in chat(client, stream=True):
            got += 1
    assert got == 3
    up.stream_break_after = None
    assert len(list(chat(client, stream=True))) > 3
