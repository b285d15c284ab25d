"""FakeUpstream's wire formats (OpenAI chat, streaming, tools, embeddings; Azure), through the official openai SDK.

Errors and injected faults: test_fake_upstream_faults.py; run_server, fast mode, the standalone CLI, demo data and
the simulated teacher: test_fake_upstream_standalone.py (both in this folder)."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from tests.fake_upstream.helpers import API_VERSION, AZ_KEY, KEY, MODELS, MSGS, chat, raw_post

from insource.testing import FakeUpstream


def fn_tool(name: str, props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    params = {"type": "object", "properties": props, **({"required": required} if required else {})}
    return {"type": "function", "function": {"name": name, "parameters": params}}


UNIT = {"type": "string", "enum": ["celsius", "f"]}
WEATHER_TOOL = fn_tool("get_weather", {"location": {"type": "string"}, "unit": UNIT}, ["location", "unit"])
TIME_TOOL = fn_tool("get_time", {"tz": {"type": "string"}})


@pytest.fixture
def azure(url: str) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(azure_endpoint=url, api_key=AZ_KEY, api_version=API_VERSION, max_retries=0) as c:
        yield c


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON events; the literal [DONE] marker is kept as the string."""
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


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
