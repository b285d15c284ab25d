"""Bug classes other gateways shipped (/work/shared/notes/lessons.md), tried on a real `insource serve`."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from tests.conftest import UPSTREAM_KEY, Gateway, start_gateway, stop_gateway

from insource.config import load_config
from insource.store import open_store
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello lessons"}]
PRICE = "price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }"
CHUNK = {"id": "chatcmpl-same-every-time", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _sse(data: object) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _heartbeat_chat(request: Request) -> Response:
    """An upstream that sends an SSE comment, thinks for a second, then answers (always with the same id)."""

    async def events() -> AsyncIterator[bytes]:
        yield b": ping\n\n"
        await asyncio.sleep(1.0)
        yield _sse({**CHUNK, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]})
        yield _sse({**CHUNK, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _config(up: str, heartbeat: str) -> str:
    return f"""
[store]
url = "sqlite:///./insource.db"

[providers.azfull]
kind = "azure"
base_url = "{up}/openai/deployments/other-deploy/chat/completions?api-version=2025-01-01-preview"
api_key = "env::LOCAL_UPSTREAM_KEY"

[providers.azpath]
kind = "azure"
base_url = "{up}/openai/deployments/mini-deploy"
api_key = "env::LOCAL_UPSTREAM_KEY"
api_version = "2024-10-21"

[providers.oaifull]
kind = "openai"
base_url = "{up}/v1/chat/completions"
api_key = "env::LOCAL_UPSTREAM_KEY"
terms = "self-hosted"

[providers.retrying]
kind = "openai"
base_url = "{up}/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"
terms = "self-hosted"
max_retries = 2
circuit_failures = 100

[providers.hb]
kind = "openai"
base_url = "{heartbeat}/v1"
terms = "self-hosted"

[models."azfull-mini"]
targets = ["azfull:mini-deploy"]
{PRICE}

[models."azpath-mini"]
targets = ["azpath:mini-deploy"]
{PRICE}

[models."oaifull-mini"]
targets = ["oaifull:gpt-4o-mini"]
{PRICE}

[models."two-targets"]
targets = ["retrying:gpt-4o-mini", "retrying:gpt-4o"]
{PRICE}

[models."hb-mini"]
targets = ["hb:m"]
{PRICE}
"""


@pytest.fixture(scope="module")
def lessons_gw(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("lessons")
    heartbeat = run_server(Starlette(routes=[Route("/v1/chat/completions", _heartbeat_chat, methods=["POST"])]))
    config = folder / "insource.toml"
    config.write_text(_config(upstream[1].url, heartbeat.url))
    gw = start_gateway(config, {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY})
    yield gw
    stop_gateway(gw)
    heartbeat.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _client(gw: Gateway, key: str, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=max_retries)


def test_a_base_url_holding_the_full_path_reaches_the_targets_deployment(
    lessons_gw: Gateway, fake: FakeUpstream
) -> None:
    c = _client(lessons_gw, lessons_gw.key()["key"])
    assert c.chat.completions.create(model="azfull-mini", messages=MSG).choices[0].message.content
    sent = fake.requests[-1]
    assert sent.path == "/openai/deployments/mini-deploy/chat/completions"  # not base_url's other-deploy
    assert sent.query == {"api-version": "2025-01-01-preview"}  # base_url's version: api_version is not set
    c.chat.completions.create(model="azpath-mini", messages=MSG)
    sent = fake.requests[-1]
    assert sent.path == "/openai/deployments/mini-deploy/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}  # an explicit api_version wins
    c.chat.completions.create(model="oaifull-mini", messages=MSG)
    assert fake.requests[-1].path == "/v1/chat/completions"


def test_azure_content_filter_chunks_reach_openai_clients_with_a_delta(gateway: Gateway, fake: FakeUpstream) -> None:
    created = gateway.key()
    c = _client(gateway, created["key"])
    plain = c.chat.completions.create(model="azure-mini", messages=MSG).choices[0].message.content
    chunks = list(c.chat.completions.create(model="azure-mini", messages=MSG, stream=True))
    with_choices = [ch for ch in chunks if ch.choices]
    assert len(with_choices) == len(chunks) - 1  # only Azure's prompt-filter chunk has none (as OpenAI's spec allows)
    assert all(ch.choices[0].delta is not None for ch in with_choices)  # the content-filter-only chunk included
    assert "".join(ch.choices[0].delta.content or "" for ch in with_choices) == plain
    assert all(ch.usage is None for ch in chunks)  # the usage insource asked for is not relayed
    rows = gateway.usage_rows("key_id = ?", (created["id"],), wait_for=2)
    assert rows[1]["completion_tokens"] == rows[0]["completion_tokens"] > 0  # yet the stream is metered


def test_gateway_retries_are_not_multiplied_by_the_sdks(lessons_gw: Gateway, fake: FakeUpstream) -> None:
    fake.fail_next(500, count=50)
    c = _client(lessons_gw, lessons_gw.key()["key"], max_retries=2)  # the SDK default: retries 5xx twice
    with pytest.raises(openai.InternalServerError) as caught:
        c.chat.completions.create(model="two-targets", messages=MSG)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 6  # (1 try + 2 retries) × 2 targets, once: not 18


def test_sse_comments_are_relayed_at_once_and_rows_never_collide(lessons_gw: Gateway) -> None:
    created = lessons_gw.key()
    body = {"model": "hb-mini", "stream": True, "messages": MSG}
    started = time.monotonic()
    arrivals: list[tuple[float, bytes]] = []
    auth = {"Authorization": f"Bearer {created['key']}"}
    with httpx.stream("POST", lessons_gw.base_url + "/chat/completions", json=body, headers=auth, timeout=30) as r:
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    assert arrivals[0][1] == b": ping\n\n"
    data_at = next(t for t, chunk in arrivals if chunk.startswith(b"data:"))
    assert data_at - arrivals[0][0] > 0.5  # the comment was not held back until the answer came
    chunks = list(_client(lessons_gw, created["key"]).chat.completions.create(**body))  # type: ignore[call-overload]
    assert [ch.choices[0].delta.content for ch in chunks] == ["hi"]
    rows = lessons_gw.usage_rows("key_id = ?", (created["id"],), wait_for=2)
    assert len(rows) == 2 and len({r["id"] for r in rows}) == 2  # the upstream's id was the same both times
    assert all((r["prompt_tokens"], r["completion_tokens"]) == (3, 1) for r in rows)


def test_max_tokens_names_reach_azure_as_the_client_sent_them(gateway: Gateway, fake: FakeUpstream) -> None:
    c = _client(gateway, gateway.key()["key"])
    for name in ("max_tokens", "max_completion_tokens"):
        c.chat.completions.create(model="azure-mini", messages=MSG, **{name: 5})  # type: ignore[call-overload]
        sent = fake.requests[-1].body
        other = "max_tokens" if name == "max_completion_tokens" else "max_completion_tokens"
        assert sent[name] == 5 and other not in sent  # never renamed (some deployments refuse one or the other)


def test_urls_in_a_request_are_never_followed(gateway: Gateway, fake: FakeUpstream) -> None:
    seen: list[str] = []

    async def record(request: Request) -> Response:
        seen.append(f"{request.method} {request.url.path} {request.headers.get('authorization')}")
        return Response("{}", media_type="application/json")

    canary = run_server(Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])]))
    try:
        url = canary.url + "/v1"
        nested = {"api_base": url, "base_url": url, "metadata": {"api_base": url}, "extra_body": {"base_url": url}}
        c = _client(gateway, gateway.key()["key"])
        reply = c.chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_body=nested)
        assert reply.choices[0].message.content
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": url}])
    finally:
        canary.stop()
    assert seen == [] and len(fake.requests) == 2  # both went to the configured upstream, nothing to the canary


def test_the_tenant_comes_from_the_key_only(gateway: Gateway, fake: FakeUpstream) -> None:
    created = gateway.key(tenant="tenant-of-the-key")
    other = {"X-Insource-Tenant": "victim", "OpenAI-Organization": "victim", "X-Tenant": "victim"}
    c = _client(gateway, created["key"])
    c.chat.completions.create(
        model="gpt-4o-mini",
        messages=MSG,
        user="victim",
        extra_headers=other,
        extra_body={"tenant": "victim", "metadata": {"tenant": "victim"}},
    )
    rows = gateway.usage_rows("key_id = ?", (created["id"],), wait_for=1)
    assert [r["tenant"] for r in rows] == ["tenant-of-the-key"]


def test_a_stored_key_hash_or_prefix_is_not_a_credential(gateway: Gateway) -> None:
    created = gateway.key()
    store = open_store(load_config(gateway.config))
    try:
        row = store.query_one("SELECT hash, prefix FROM keys WHERE id = ?", (created["id"],))
    finally:
        store.close()
    assert row is not None
    for presented in (row["hash"], row["prefix"], "isk-" + row["hash"]):
        for header in ({"Authorization": f"Bearer {presented}"}, {"api-key": presented}):
            resp = httpx.post(
                gateway.base_url + "/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, headers=header
            )
            assert resp.status_code == 401, presented
