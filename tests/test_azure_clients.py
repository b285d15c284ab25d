"""Apps written for Azure OpenAI change only their endpoint: the official `AzureOpenAI` client (and Azure-style
REST paths) reach insource's chat and embeddings, the deployment naming the model alias."""

from __future__ import annotations

import httpx
import openai
from tests.conftest import Gateway

from insource.testing.fake_upstream import FakeUpstream

API_VERSION = "2024-10-21"


def azure_client(gw: Gateway, key: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=gw.url, api_key=key, api_version=API_VERSION, max_retries=0)


def test_azure_sdk_chat_stream_and_embeddings(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key("azure-app")["key"]
    client = azure_client(gateway, key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",  # the deployment: an insource model alias
        messages=[{"role": "user", "content": "hello from an Azure app"}],
        metadata={"task": "azure-app-task"},
    )
    assert raw.headers["x-insource-served-by"] == "local:gpt-4o-mini"
    assert raw.parse().choices[0].message.content
    assert fake.requests[-1].body["model"] == "gpt-4o-mini" and "metadata" not in fake.requests[-1].body
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
    rows = gateway.usage_rows("tenant = 'azure-app'", wait_for=3)
    assert [r["endpoint"] for r in rows] == ["chat", "chat", "embeddings"]
    assert rows[0]["task"] == "azure-app-task" and all(r["status"] == 200 and r["cost_usd"] >= 0 for r in rows)


def test_the_path_names_the_model_and_bad_paths_are_clean_errors(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key("azure-rest")["key"]
    base = f"{gateway.url}/openai/deployments"
    headers = {"api-key": key}
    body = {"model": "something-else", "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(f"{base}/gpt-4o-mini/chat/completions?api-version={API_VERSION}", json=body, headers=headers)
    assert ok.status_code == 200 and ok.headers["x-insource-served-by"] == "local:gpt-4o-mini"
    assert fake.requests[-1].body["model"] == "gpt-4o-mini"  # the deployment, not the body's model
    unknown = azure_client(gateway, key)
    try:
        unknown.chat.completions.create(model="no-such-deploy", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown deployment must be refused")
    except openai.NotFoundError as exc:
        assert exc.code == "model_not_found"
    bad = httpx.post(f"{base}/gpt-4o-mini/chat/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    nokey = httpx.post(f"{base}/gpt-4o-mini/chat/completions", json=body)
    assert nokey.status_code == 401
    other = httpx.post(f"{base}/gpt-4o-mini/completions", json=body, headers=headers)
    assert other.status_code == 404 and "error" in other.json()
