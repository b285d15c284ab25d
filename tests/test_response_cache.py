"""The response cache through a real `insource serve` and the official openai SDK: hits and misses, tenants never
sharing an entry, a streamed hit, the temperature rule, the time to live, the memory bound, the usage records
(`served_by = "cache"`, cost 0, the teacher's price avoided), `spend --by served_by` and `savings`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, run_cli, start_gateway, stop_gateway
from tests.test_redis_limits import REDIS, redis_url  # noqa: F401 - the fixture that starts redis-server

from insource.config import parse_config
from insource.service.keys import KeyInfo
from insource.service.request import RequestFacts
from insource.service.response_cache import LocalCache, cache_key
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

ENV = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY}
TTL_S = 3.0


def _config(folder: Path, up_url: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "insource.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///./insource.db"

[cache]
enabled = true
ttl_s = {TTL_S}
max_mb = 1

[providers.local]
kind = "openai"
base_url = "{up_url}/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"

[models."gpt-4o-mini"]
targets = ["local:gpt-4o-mini"]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
cache = true

[models."gpt-4o"]
targets = ["local:gpt-4o"]
price = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}

[tenants.cached-tenant]
cache = true
{extra}
"""
    )
    return config


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeUpstream, ServerHandle]]:
    fake = FakeUpstream()
    handle = run_server(fake)
    yield fake, handle
    handle.stop()


@pytest.fixture(scope="module")
def gw(upstream: tuple[FakeUpstream, ServerHandle], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(_config(tmp_path_factory.mktemp("cache"), upstream[1].url), ENV)
    yield gateway
    stop_gateway(gateway)


def _client(gw: Gateway, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(tenant)["key"], max_retries=0)


def _ask(client: openai.OpenAI, text: str, model: str = "gpt-4o-mini", **kw: Any) -> tuple[str, dict[str, str], str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        **kw,
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers), raw.headers["x-request-id"]


def _upstream_calls(fake: FakeUpstream, text: str) -> int:
    return sum(1 for r in fake.requests if text in json.dumps(r.body))


def test_a_repeat_is_a_hit_metered_as_cache(gw: Gateway, upstream: tuple[FakeUpstream, ServerHandle]) -> None:
    fake = upstream[0]
    client = _client(gw)
    first, h1, rid1 = _ask(client, "hit me once", temperature=0)
    second, h2, rid2 = _ask(client, "hit me once", temperature=0)
    assert (h1["x-insource-cache"], h2["x-insource-cache"]) == ("miss", "hit")
    assert second == first and h2["x-insource-served-by"] == "cache"
    assert _upstream_calls(fake, "hit me once") == 1  # the hit never reached the upstream
    rows = {r["request_id"]: r for r in gw.usage_rows("request_id IN (?, ?)", (rid1, rid2), wait_for=2)}
    assert rows[rid1]["served_by"] == "local:gpt-4o-mini" and rows[rid1]["cost_usd"] > 0
    hit = rows[rid2]
    assert hit["served_by"] == "cache" and hit["cost_usd"] == 0
    assert hit["cost_avoided_usd"] == pytest.approx(rows[rid1]["cost_usd"])  # the teacher's price of the answer
    assert hit["status"] == 200 and hit["attempts"] == 0


def test_tenants_never_share_an_entry(gw: Gateway, upstream: tuple[FakeUpstream, ServerHandle]) -> None:
    _ask(_client(gw, "acme"), "tenant secret answer", temperature=0)
    _text, headers, _ = _ask(_client(gw, "other"), "tenant secret answer", temperature=0)
    assert headers["x-insource-cache"] == "miss"
    assert _upstream_calls(upstream[0], "tenant secret answer") == 2


def test_a_stream_is_answered_from_the_cache_as_a_stream(gw: Gateway) -> None:
    client = _client(gw)
    text, _, _ = _ask(client, "stream me later", temperature=0)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream me later"}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-insource-cache"] == "hit"
        chunks = list(resp.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # and a streamed miss fills the cache for a plain request
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "streamed first"}], temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    again, headers, _ = _ask(client, "streamed first", temperature=0)
    assert headers["x-insource-cache"] == "hit" and again == streamed


def test_sampled_requests_are_not_cached(gw: Gateway, upstream: tuple[FakeUpstream, ServerHandle]) -> None:
    """temperature > 0, and no temperature at all (the upstream's default, 1): each asks for a new sample."""
    client = _client(gw)
    for _ in range(2):
        _text, headers, _ = _ask(client, "be creative", temperature=0.7)
        assert "x-insource-cache" not in headers
        _text, headers, _ = _ask(client, "no temperature given")
        assert "x-insource-cache" not in headers
    assert _upstream_calls(upstream[0], "be creative") == 2
    assert _upstream_calls(upstream[0], "no temperature given") == 2


def test_a_model_without_cache_is_not_cached_unless_its_tenant_is(gw: Gateway) -> None:
    _ask(_client(gw), "other model", model="gpt-4o", temperature=0)
    _text, headers, _ = _ask(_client(gw), "other model", model="gpt-4o", temperature=0)
    assert "x-insource-cache" not in headers
    client = _client(gw, "cached-tenant")
    _ask(client, "other model", model="gpt-4o", temperature=0)
    _text, headers, _ = _ask(client, "other model", model="gpt-4o", temperature=0)
    assert headers["x-insource-cache"] == "hit"


def test_entries_expire(gw: Gateway) -> None:
    client = _client(gw)
    _ask(client, "short lived", temperature=0)
    time.sleep(TTL_S + 0.2)
    _text, headers, _ = _ask(client, "short lived", temperature=0)
    assert headers["x-insource-cache"] == "miss"


def test_an_answer_larger_than_the_cache_is_not_cached(gw: Gateway) -> None:
    client = _client(gw)
    big = "x" * (1024 * 1024)  # the fake upstream echoes it: the answer alone is larger than max_mb = 1
    _ask(client, big, temperature=0)
    _text, headers, _ = _ask(client, big, temperature=0)
    assert headers["x-insource-cache"] == "miss"
    streamed = "y" * (1024 * 1024)  # a streamed answer, reassembled, is held to the same bound
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": streamed}], temperature=0, stream=True
        ) as resp:
            assert resp.headers["x-insource-cache"] == "miss" and "data: [DONE]" in list(resp.iter_lines())


def test_spend_and_savings_show_the_cache_as_its_own_source(gw: Gateway) -> None:
    client = _client(gw)
    for _ in range(3):
        _ask(client, "counted hits", temperature=0, extra_headers={"X-Insource-Task": "faq"})
    gw.usage_rows("served_by = 'cache' AND task = 'faq'", wait_for=2)
    spend = json.loads(run_cli("spend", "--by", "served_by", "--json", "--config", str(gw.config)).stdout)
    cache_row = next(r for r in spend if r["served_by"] == "cache")
    assert cache_row["requests"] >= 2 and cache_row["cost_usd"] == 0
    by_task = json.loads(run_cli("savings", "--json", "--config", str(gw.config)).stdout)
    faq = next(r for r in by_task["rows"] if r["task"] == "faq")
    assert faq["insourced"] == 0 and faq["teacher_cost_avoided_usd"] > 0  # a hit is no student's answer
    by_source = json.loads(run_cli("savings", "--by", "source", "--json", "--config", str(gw.config)).stdout)
    sources = {r["source"]: r for r in by_source["rows"]}
    assert sources["cache"]["requests"] >= 2 and sources["cache"]["teacher_cost_avoided_usd"] > 0
    assert sources["cache"]["net_savings_usd"] == sources["cache"]["teacher_cost_avoided_usd"]
    assert sources["teacher"]["teacher_cost_avoided_usd"] == 0
    assert set(by_source["total"]) == set(faq) - {"task"}  # the same figures as every savings report


# -- the parts on their own --------------------------------------------------------------------------------------
async def test_the_lru_holds_its_memory_bound() -> None:
    cache = LocalCache(max_bytes=1000, ttl_s=60)
    for i in range(20):
        cache.put(f"k{i}", b"v" * 100)
    assert cache.size <= 1000
    assert await cache.get("k0") is None and await cache.get("k19") == b"v" * 100
    await cache.get("k12")  # recently used: kept over older ones
    cache.put("new", b"v" * 300)
    assert await cache.get("k12") is not None and await cache.get("k13") is None
    cache.put("huge", b"v" * 2000)
    assert await cache.get("huge") is None and cache.size <= 1000


def test_the_key_follows_the_temperature_rule_and_the_request() -> None:
    def key(body: dict[str, Any], nondeterministic: bool = False, tenant: str = "a") -> str | None:
        cfg = parse_config(
            {
                "cache": {"enabled": True, "cache_nondeterministic": nondeterministic},
                "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                "models": {"m": {"targets": ["p:m"], "cache": True}},
            },
            Path("."),
        )
        facts = RequestFacts(
            KeyInfo("k", tenant, None, None, None, None, capture=False, revoked=False), "chat", model="m"
        )
        return cache_key(cfg, facts, body)

    base = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    assert key({**base, "temperature": 0.5}) is None
    assert key({**base, "temperature": 0.5}, nondeterministic=True) is not None
    # no temperature (or null) is the upstream's default, 1: sampled, so not cached either
    assert key(base) is None and key({**base, "temperature": None}) is None
    assert key(base, nondeterministic=True) is not None
    base = {**base, "temperature": 0}
    assert key(base) is not None and key({**base, "temperature": 0.0}) is not None
    assert key(base) == key({**base, "stream": True, "user": "u1"})  # transport details are not the request
    assert key(base) != key({**base, "max_tokens": 5}) != key({**base, "tools": [{"type": "function"}]})
    assert key(base) != key(base, tenant="b")


# -- shared by every worker through Redis ------------------------------------------------------------------------
@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")
def test_workers_share_the_cache_through_redis(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis = request.getfixturevalue("redis_url")
    config = _config(tmp_path, upstream[1].url)
    config.write_text(config.read_text().replace("[store]", f'[server]\nredis_url = "{redis}"\n\n[store]', 1))
    gw = start_gateway(config, ENV, workers=2)
    try:
        key = gw.key("acme")["key"]
        seen = []
        for _ in range(8):  # a new client (connection) each time: the kernel spreads them over both workers
            client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
            _text, headers, _ = _ask(client, "shared by workers", temperature=0)
            seen.append(headers["x-insource-cache"])
            client.close()
        assert seen == ["miss"] + ["hit"] * 7
        assert _upstream_calls(upstream[0], "shared by workers") == 1
    finally:
        stop_gateway(gw)


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"cache": {"ttl_s": 0}}, "cache.ttl_s"),
        ({"cache": {"max_mb": -1}}, "cache.max_mb"),
        ({"cache": {"enabeld": True}}, "cache.enabeld"),
        ({"store": {"fsync": "always"}}, "store.fsync"),
    ],
)
def test_bad_cache_and_journal_settings_are_refused(section: dict[str, Any], path: str) -> None:
    from insource.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(section, Path("."))
    assert path in err.value.message


async def test_a_cached_tool_call_replays_as_stream_chunks() -> None:
    from insource.service.response_cache import replay_stream

    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    data = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    events = [e async for e in replay_stream(data, include_usage=False)]
    assert events[-1] == b"data: [DONE]\n\n" and not any(b'"usage"' in e for e in events)
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"]["tool_calls"] == [{**call, "index": 0}]
    assert json.loads(events[1][6:])["choices"][0]["finish_reason"] == "tool_calls"
