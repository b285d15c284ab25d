"""FakeUpstream, run_server, demo data and the simulated teacher, exercised through the official openai SDK."""

from __future__ import annotations

import base64
import collections
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from insource.testing import FakeUpstream, SimulatedTeacher, demo_data, run_server
from insource.testing.teacher import customer_text, keyword_label

KEY = "sk-test-123"
AZ_KEY = "azure-key-456"
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4o-2024-11-20", "text-embedding-3-small"]
DEPLOYMENTS = {"chat-prod": "gpt-4o-mini", "embed": "text-embedding-3-small"}
API_VERSION = "2024-10-21"
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, how are you?"}]


def fn_tool(name: str, props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    params = {"type": "object", "properties": props, **({"required": required} if required else {})}
    return {"type": "function", "function": {"name": name, "parameters": params}}


UNIT = {"type": "string", "enum": ["celsius", "f"]}
WEATHER_TOOL = fn_tool("get_weather", {"location": {"type": "string"}, "unit": UNIT}, ["location", "unit"])
TIME_TOOL = fn_tool("get_time", {"tz": {"type": "string"}})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeUpstream, str]]:
    up = FakeUpstream(api_key=KEY, azure_api_key=AZ_KEY, models=MODELS, azure_deployments=DEPLOYMENTS)
    with run_server(up) as handle:
        yield up, handle.url


@pytest.fixture
def up(server: tuple[FakeUpstream, str]) -> FakeUpstream:
    server[0].reset()
    return server[0]


@pytest.fixture
def url(server: tuple[FakeUpstream, str], up: FakeUpstream) -> str:
    return server[1]


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def azure(url: str) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(azure_endpoint=url, api_key=AZ_KEY, api_version=API_VERSION, max_retries=0) as c:
        yield c


def chat(c: Any, **kw: Any) -> Any:
    """chat.completions.create with the default model and messages."""
    return c.chat.completions.create(**{"model": "gpt-4o-mini", "messages": MSGS, **kw})


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON events; the literal [DONE] marker is kept as the string."""
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def raw_post(url: str, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=data, headers={"content-type": "application/json", **hdrs})


# ---------------------------------------------------------------- OpenAI chat


def test_chat_completion_shape_usage_and_recording(up: FakeUpstream, client: openai.OpenAI) -> None:
    r = chat(client)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == "gpt-4o-mini-2024-07-18"
    assert r.system_fingerprint == "fp_insource_fake" and r.created > 1_700_000_000
    ch = r.choices[0]
    assert ch.index == 0 and ch.finish_reason == "stop" and ch.logprobs is None
    assert ch.message.role == "assistant" and ch.message.refusal is None and ch.message.tool_calls is None
    assert "Hello there, how are you?" in (ch.message.content or "")
    # 3 priming + (3 + 3 "Be brief.") + (3 + 7 "Hello there , how are you ?") = 19, by hand
    assert r.usage is not None and r.usage.prompt_tokens == 19
    assert r.usage.completion_tokens == len(rule_tokens(ch.message.content or ""))
    assert r.usage.total_tokens == 19 + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details and r.usage.completion_tokens_details.reasoning_tokens == 0
    (req,) = up.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == f"Bearer {KEY}" and req.body["messages"] == MSGS
    assert chat(client, model="gpt-4o-2024-11-20").model == "gpt-4o-2024-11-20"  # already dated: kept
    assert sorted(m.id for m in client.models.list()) == sorted(MODELS)


def rule_tokens(text: str) -> list[str]:
    """Independent re-statement of the documented token rule (word runs and single punctuation marks)."""
    tokens: list[str] = []
    word = ""
    for c in text:
        if c.isalnum() or c == "_":
            word += c
            continue
        if word:
            tokens.append(word)
            word = ""
        if not c.isspace():
            tokens.append(c)
    return [*tokens, word] if word else tokens


def test_auth_errors(url: str) -> None:
    with (
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as err,
    ):
        chat(bad)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    r = raw_post(url, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSGS}, headers={})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_async_client_and_stream(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0) as ac:
        r = await chat(ac)
        stream = await chat(ac, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == r.choices[0].message.content


def test_stream_wire_without_usage(url: str, client: openai.OpenAI) -> None:
    full = chat(client)
    r = raw_post(url, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSGS, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == full.choices[0].message.content and len(chunks) > 5


def test_stream_wire_with_include_usage(url: str, client: openai.OpenAI) -> None:
    full = raw_post(url, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSGS}).json()
    body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_events(raw_post(url, "/v1/chat/completions", body).text)[:-1]
    *content, last = chunks
    assert all(c["usage"] is None and len(c["choices"]) == 1 for c in content)
    assert last["choices"] == [] and last["usage"] == full["usage"]
    stream = chat(client, stream=True, stream_options={"include_usage": True})
    usages = [c.usage for c in stream if c.usage is not None]
    assert len(usages) == 1 and usages[0].completion_tokens == full["usage"]["completion_tokens"]


def test_tool_calls(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Weather in Lyon?"}]
    r = chat(client, messages=ask, tools=[WEATHER_TOOL, TIME_TOOL])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    (call,) = ch.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"location", "unit"} and args["unit"] == "celsius" and isinstance(args["location"], str)
    pick_time = {"type": "function", "function": {"name": "get_time"}}
    named = chat(client, messages=ask, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=pick_time)
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"
    none = chat(client, messages=ask, tools=[WEATHER_TOOL], tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    follow = [*ask, ch.message.model_dump(), {"role": "tool", "tool_call_id": call.id, "content": "12C"}]
    after = chat(client, messages=follow, tools=[WEATHER_TOOL])
    assert after.choices[0].message.content and after.choices[0].finish_reason == "stop"


def test_tool_call_streaming(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Weather in Lyon?"}]
    full = chat(client, messages=ask, tools=[WEATHER_TOOL])
    stream = chat(client, messages=ask, tools=[WEATHER_TOOL], stream=True)
    chunks = [c for c in stream if c.choices]
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert first.index == 0 and first.id and first.id.startswith("call_") and first.function.name == "get_weather"
    fragments = [c.choices[0].delta.tool_calls[0].function.arguments for c in chunks[1:-1]]
    assert len(fragments) > 3 and all(c.choices[0].delta.tool_calls[0].id is None for c in chunks[1:-1])
    assert json.loads("".join(fragments)) == json.loads(full.choices[0].message.tool_calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_modes(up: FakeUpstream, client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Reply in JSON: what is 2+2?"}]
    r = chat(client, messages=ask, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, response_format={"type": "json_object"})
    assert err.value.param == "messages"
    schema = fn_tool("x", {"intent": {"enum": ["a", "b"]}, "score": {"type": "number"}}, ["intent", "score"])
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema["function"]["parameters"]}}
    r = chat(client, response_format=fmt)
    parsed = json.loads(r.choices[0].message.content or "")
    assert parsed["intent"] == "a" and isinstance(parsed["score"], float)
    up.responder = lambda model, messages, body: '{"intent": "b", "score": 0.5}'
    r = chat(client, response_format=fmt)
    assert json.loads(r.choices[0].message.content or "") == {"intent": "b", "score": 0.5}


def test_n_choices_and_interleaved_stream(url: str, client: openai.OpenAI) -> None:
    one = chat(client)
    two = chat(client, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "n": 2}
    chunks = sse_events(raw_post(url, "/v1/chat/completions", body).text)[:-1]
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes[:6] == [0, 1, 0, 1, 0, 1] and indexes.count(0) == indexes.count(1)
    for i in (0, 1):
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"][0]["index"] == i)
        assert text == two.choices[i].message.content


def test_max_tokens_truncates(url: str, client: openai.OpenAI) -> None:
    full = chat(client)
    for kw in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        r = chat(client, **kw)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
        assert (full.choices[0].message.content or "").startswith(r.choices[0].message.content or "x")
    body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "max_tokens": 2}
    chunks = sse_events(raw_post(url, "/v1/chat/completions", body).text)[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) == 4


def test_cached_and_reasoning_tokens(up: FakeUpstream, client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "word " * 60}]
    up.cache_min_prompt_tokens = 50
    up.cached_tokens = 0.5
    up.reasoning_tokens = 7
    r = chat(client, messages=long)
    u = r.usage
    assert u is not None and u.prompt_tokens == 3 + 3 + 60
    assert u.prompt_tokens_details.cached_tokens == 33
    assert u.completion_tokens_details.reasoning_tokens == 7
    assert u.completion_tokens == len(rule_tokens(r.choices[0].message.content or "")) + 7
    up.cached_tokens = 40
    assert chat(client, messages=long).usage.prompt_tokens_details.cached_tokens == 40
    short = chat(client)
    assert short.usage.prompt_tokens_details.cached_tokens == 0


# ---------------------------------------------------------------- embeddings


def test_embeddings_float_and_base64(up: FakeUpstream, url: str, client: openai.OpenAI) -> None:
    texts = ["refund please", "where is it"]
    default = client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert up.requests[-1].body["encoding_format"] == "base64"  # the SDK asks for base64 by default
    floats = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1] and default.usage.prompt_tokens == 5
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 16 and math.isclose(sum(x * x for x in b.embedding), 1.0, rel_tol=1e-9)
        assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a.embedding, b.embedding, strict=True))
    assert default.data[0].embedding != default.data[1].embedding
    single = client.embeddings.create(model="text-embedding-3-small", input="refund please", encoding_format="float")
    assert single.data[0].embedding == floats.data[0].embedding
    small = client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=8, encoding_format="float")
    assert len(small.data[0].embedding) == 8
    body = {"model": "text-embedding-3-small", "input": "refund please", "encoding_format": "base64"}
    raw = raw_post(url, "/v1/embeddings", body).json()
    decoded = struct.unpack("<16f", base64.b64decode(raw["data"][0]["embedding"]))
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(decoded, floats.data[0].embedding, strict=True))
    assert raw["usage"] == {"prompt_tokens": 2, "total_tokens": 2} and raw["object"] == "list"


# ---------------------------------------------------------------- Azure


def test_azure_chat_and_embeddings(up: FakeUpstream, azure: openai.AzureOpenAI) -> None:
    r = azure.chat.completions.create(model="chat-prod", messages=MSGS)
    assert r.model == "gpt-4o-mini-2024-07-18"
    extra = r.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["jailbreak"]["detected"] is False
    assert (r.choices[0].model_extra or {})["content_filter_results"]["hate"]["severity"] == "safe"
    req = up.requests[-1]
    assert req.path == "/openai/deployments/chat-prod/chat/completions"
    assert req.query == {"api-version": API_VERSION} and req.headers["api-key"] == AZ_KEY
    e = azure.embeddings.create(model="embed", input="hello", encoding_format="float")
    assert e.model == "text-embedding-3-small" and len(e.data[0].embedding) == 16


def test_azure_stream_quirks(url: str, azure: openai.AzureOpenAI) -> None:
    path = f"/openai/deployments/chat-prod/chat/completions?api-version={API_VERSION}"
    body = {"messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(raw_post(url, path, body, headers={"api-key": AZ_KEY}).text)
    first = events[0]
    assert first["choices"] == [] and first["prompt_filter_results"] and first["id"] == ""
    filter_only = [e for e in events[1:-1] if e["choices"] and "delta" not in e["choices"][0]]
    assert filter_only and "content_filter_results" in filter_only[0]["choices"][0]
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] > 0
    assert all(e["model"] == "gpt-4o-mini-2024-07-18" for e in events[1:-1])
    stream = azure.chat.completions.create(model="chat-prod", messages=MSGS, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices and c.choices[0].delta)
    assert text == azure.chat.completions.create(model="chat-prod", messages=MSGS).choices[0].message.content


def test_azure_errors(url: str) -> None:
    r = raw_post(url, "/openai/deployments/chat-prod/chat/completions", {"messages": MSGS}, {"api-key": AZ_KEY})
    assert r.status_code == 404 and r.json() == {"error": {"code": "404", "message": "Resource not found"}}
    with (
        openai.AzureOpenAI(azure_endpoint=url, api_key="nope", api_version=API_VERSION, max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model="chat-prod", messages=MSGS)
    with (
        openai.AzureOpenAI(azure_endpoint=url, api_key=AZ_KEY, api_version=API_VERSION, max_retries=0) as az,
        pytest.raises(openai.NotFoundError) as err,
    ):
        az.chat.completions.create(model="no-such-deployment", messages=MSGS)
    assert err.value.code == "DeploymentNotFound"


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


# ---------------------------------------------------------------- server lifecycle, fast mode, CLI


def test_run_server_starts_and_stops_fast_even_with_a_hung_request() -> None:
    up = FakeUpstream()
    t0 = time.perf_counter()
    handle = run_server(up)
    started = time.perf_counter() - t0
    up.hang = True

    def hung_call() -> None:
        with pytest.raises(httpx.TransportError):  # the server drops it on stop
            httpx.post(f"{handle.url}/v1/embeddings", json={"model": "m", "input": "x"}, timeout=5)

    worker = threading.Thread(target=hung_call, daemon=True)
    worker.start()
    assert up.wait_for_requests(1, timeout=3)
    t0 = time.perf_counter()
    handle.stop()
    stopped = time.perf_counter() - t0
    worker.join(2)
    assert started < 1.0 and stopped < 1.0 and not handle.running and not worker.is_alive()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((handle.host, handle.port), timeout=1):
        pass


def test_fast_mode_replays_preserialised_answers() -> None:
    up = FakeUpstream(fast=True)
    with run_server(up) as handle, openai.OpenAI(base_url=f"{handle.url}/v1", api_key="k", max_retries=0) as c:
        a = chat(c)
        b = chat(c, messages=[{"role": "user", "content": "other"}])
        assert a.id == b.id and a.choices[0].message.content == b.choices[0].message.content
        s1 = "".join(x.choices[0].delta.content or "" for x in chat(c, stream=True) if x.choices)
        s2 = "".join(x.choices[0].delta.content or "" for x in chat(c, stream=True) if x.choices)
        assert s1 == s2 == a.choices[0].message.content
        up.fail_next(500)
        with pytest.raises(openai.InternalServerError):
            chat(c)
        assert len(up.requests) == 3  # first chat, first stream, the fault: replays are not recorded


def test_standalone_cli() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "FAKE_KEY": "sk-cli"}
    cmd = [sys.executable, "-m", "insource.testing.fake_upstream", "--port", str(port), "--api-key-env", "FAKE_KEY"]
    proc = subprocess.Popen([*cmd, "--delay-ms", "5"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "standalone server did not start"
                time.sleep(0.05)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0) as c:
            assert chat(c).choices
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "simulated" in err and "Traceback" not in err and "Warning" not in err
    missing = subprocess.run([*cmd[:-1], "NOT_SET_ANYWHERE"], capture_output=True, text=True, timeout=30, env=env)
    assert missing.returncode == 2 and "NOT_SET_ANYWHERE" in missing.stderr and "Traceback" not in missing.stderr


# ---------------------------------------------------------------- demo data and teacher


def test_demo_data_is_deterministic_and_diverse() -> None:
    a = demo_data.generate(1500, seed=7)
    assert a == demo_data.generate(1500, seed=7) and a != demo_data.generate(1500, seed=8)
    assert demo_data.generate(100, seed=7) == a[:100]
    texts = [t for t, _ in a]
    counts = collections.Counter(label for _, label in a)
    assert 12 <= len(demo_data.INTENTS) <= 16 and set(counts) == set(demo_data.INTENTS)
    assert len(set(texts)) / len(texts) >= 0.97
    assert max(counts.values()) / len(a) < 0.25 and min(counts.values()) >= 30
    ambiguous = [t for t in texts if demo_data.ambiguous_alternative(t)]
    assert 0.02 <= len(ambiguous) / len(a) <= 0.07
    assert statistics.mean(len(t.split()) for t in texts) > 6
    assert demo_data.generate(0, 1) == []
    with pytest.raises(ValueError):
        demo_data.generate(-1, 1)


def test_system_prompt_and_messages() -> None:
    for intent in demo_data.INTENTS:
        assert f"- {intent}:" in demo_data.SYSTEM_PROMPT
    assert demo_data.SYSTEM_PROMPT.rstrip().endswith("Answer with the intent label only.")
    msgs = demo_data.build_messages("Where is my order #123?")
    assert [m["role"] for m in msgs] == ["system", "user"] and customer_text(msgs) == "Where is my order #123?"
    assert customer_text([{"role": "user", "content": 'Customer message: "cancel it"'}]) == "cancel it"


def test_teacher_accuracy_and_mistakes() -> None:
    pairs = demo_data.generate(3000, seed=11)
    teacher = SimulatedTeacher(error_rate=0.01, ambiguous_flip_rate=0.3, seed=3, speed=0)
    plain = [(t, g) for t, g in pairs if demo_data.ambiguous_alternative(t) is None]
    wrong = sum(teacher.classify(t) != g for t, g in plain)
    assert 0.003 <= wrong / len(plain) <= 0.02 and wrong == teacher.injected_errors
    amb = [(t, g) for t, g in pairs if demo_data.ambiguous_alternative(t) is not None]
    agree = sum(teacher.classify(t) == g for t, g in amb) / len(amb)
    assert 0.5 <= agree <= 0.9
    perfect = SimulatedTeacher(error_rate=0, ambiguous_flip_rate=0, speed=0)
    assert all(perfect.classify(t) == g for t, g in pairs)
    fresh = demo_data.generate(2000, seed=12)
    kw = sum(keyword_label(t) == g for t, g in fresh if demo_data.ambiguous_alternative(t) is None)
    assert kw / sum(1 for t, _ in fresh if demo_data.ambiguous_alternative(t) is None) >= 0.9
    learned = SimulatedTeacher(error_rate=0, use_registry=False)
    learned.learn([("zzz unknown text", "invoice_request")])
    assert learned.classify("zzz unknown text") == "invoice_request"


def test_teacher_latency_model() -> None:
    t = SimulatedTeacher(seed=5)
    samples = [t.sample_latency() for _ in range(4000)]
    assert abs(statistics.mean(samples) - 0.25) < 0.015 and statistics.stdev(samples) > 0.05
    assert SimulatedTeacher(speed=0).sample_latency() == 0.0
    assert abs(statistics.mean(SimulatedTeacher(speed=0.1).sample_latency() for _ in range(500)) - 0.025) < 0.005


def test_teacher_behind_fake_upstream() -> None:
    teacher = SimulatedTeacher(speed=0.02, error_rate=0.0, server_error_rate=0.0, ambiguous_flip_rate=0.0)
    up = teacher.attach(FakeUpstream(api_key=KEY))
    assert up.error_rate == 0.0 and up.delay_fn is not None
    assert SimulatedTeacher().attach(FakeUpstream()).error_rate == 0.005
    pairs = demo_data.generate(20, seed=99)
    with run_server(up) as handle, openai.OpenAI(base_url=f"{handle.url}/v1", api_key=KEY, max_retries=0) as c:
        answers = [chat(c, messages=demo_data.build_messages(text)) for text, _ in pairs]
    assert all(a.system_fingerprint == "fp_insource_simulated" for a in answers)
    assert [a.choices[0].message.content for a in answers] == [label for _, label in pairs]
    assert "SIMULATED" in teacher.describe() and "gpt-4o-mini" in teacher.describe()
