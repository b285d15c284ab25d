"""The OpenAI-compatible surface, driven with the official openai SDK through a real `insource serve`."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway

from insource.testing.fake_upstream import FakeUpstream


def client(gw: Gateway, key: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, **kw)  # type: ignore[arg-type]


def test_chat_non_streaming_relays_and_tags(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    raw = client(gateway, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there"}],
        metadata={"task": "greet", "team": "x"},
        temperature=0.2,
    )
    completion = raw.parse()
    assert raw.headers["x-insource-served-by"] == "local:gpt-4o-mini"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    sent = fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body["metadata"] == {"team": "x"}  # insource's field removed, the rest passed through
    assert sent.body["temperature"] == 0.2
    assert sent.body["model"] == "gpt-4o-mini"


def test_emptied_metadata_is_dropped_and_header_task_used(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    client(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], metadata={"task": "t-meta"}
    )
    assert "metadata" not in fake.requests[-1].body
    client(gateway, key, default_headers={"X-Insource-Task": "t-header"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    rows = gateway.usage_rows("task IN ('t-meta', 't-header')", wait_for=2)
    assert sorted(r["task"] for r in rows) == ["t-header", "t-meta"]


def test_async_client(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as c:
            results = await asyncio.gather(
                *[
                    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}])
                    for i in range(8)
                ]
            )
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(run())
    assert len(answers) == 8 and all(answers)


def test_streaming_strips_usage_unless_asked(gateway: Gateway, fake: FakeUpstream) -> None:
    c = client(gateway, gateway.key()["key"])
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True
        )
    )
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text

    with_usage = list(
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream me please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0
    assert "".join(ch.choices[0].delta.content or "" for ch in with_usage if ch.choices) == text


def test_tools_and_json_mode_and_n(gateway: Gateway, fake: FakeUpstream) -> None:
    c = client(gateway, gateway.key()["key"])
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=tools)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls and r.choices[0].message.tool_calls[0].function.name == "get_weather"

    stream = c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
    )
    names = [
        tc.function.name
        for ch in stream
        if ch.choices
        for tc in (ch.choices[0].delta.tool_calls or [])
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"]

    r = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"},
        n=2,
    )
    assert len(r.choices) == 2
    json.loads(r.choices[0].message.content or "")


def test_embeddings_float_and_base64(gateway: Gateway, fake: FakeUpstream) -> None:
    c = client(gateway, gateway.key()["key"])
    r = c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # the SDK asks for base64
    assert len(r.data) == 2 and len(r.data[0].embedding) == 16
    r2 = c.embeddings.create(model="text-embedding-3-small", input="a", encoding_format="float")
    assert r2.data[0].embedding == pytest.approx(r.data[0].embedding, rel=1e-5)
    rows = gateway.usage_rows("endpoint='embeddings'", wait_for=2)
    assert rows[-1]["prompt_tokens"] > 0 and rows[-1]["served_by"] == "local:text-embedding-3-small"


def test_models_lists_only_allowed(gateway: Gateway) -> None:
    limited = gateway.key(models=["gpt-4o-mini"])["key"]
    assert [m.id for m in client(gateway, limited).models.list()] == ["gpt-4o-mini"]
    everything = {m.id for m in client(gateway, gateway.key()["key"]).models.list()}
    assert {"gpt-4o-mini", "azure-mini", "text-embedding-3-small"} <= everything


def test_azure_provider_with_stream_quirks(gateway: Gateway, fake: FakeUpstream) -> None:
    c = client(gateway, gateway.key()["key"])
    r = c.chat.completions.with_raw_response.create(model="azure-mini", messages=[{"role": "user", "content": "hi az"}])
    assert r.headers["x-insource-served-by"] == "az:mini-deploy"
    sent = fake.requests[-1]
    assert sent.path == "/openai/deployments/mini-deploy/chat/completions"
    assert sent.query["api-version"] == "2024-10-21"
    assert sent.headers["api-key"] == UPSTREAM_KEY and "authorization" not in sent.headers
    plain = r.parse().choices[0].message.content
    chunks = list(
        c.chat.completions.create(model="azure-mini", messages=[{"role": "user", "content": "hi az"}], stream=True)
    )
    assert any(not ch.choices for ch in chunks)  # Azure's prompt-filter chunk is relayed untouched
    pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].delta]
    assert "".join(pieces) == plain
    rows = gateway.usage_rows("served_by='az:mini-deploy'", wait_for=2)
    assert rows[0]["prompt_tokens"] == rows[1]["prompt_tokens"] > 0
    assert rows[0]["completion_tokens"] == rows[1]["completion_tokens"] > 0


def test_healthz_needs_no_key(gateway: Gateway) -> None:
    import httpx

    assert httpx.get(gateway.url + "/healthz").json()["status"] == "ok"


def test_metrics_endpoint(gateway: Gateway, fake: FakeUpstream) -> None:
    import httpx

    client(gateway, gateway.key(tenant="metrics-t")["key"]).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert httpx.get(gateway.url + "/metrics").status_code == 401  # an admin key is configured
    text = httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer adm-1"}).text
    assert (
        'insource_requests_total{tenant="metrics-t",model="gpt-4o-mini",served_by="local:gpt-4o-mini",status="200"} 1'
        in text
    )
    assert 'insource_writer_records{state="dropped"} 0' in text
