"""The response cache: an exact repeat of a chat request, by the same tenant, answered without the upstream.

Opt-in: `[cache] enabled = true` and `cache = true` on the model alias (`[models.X]`) or the tenant
(`[tenants.X]`). The key is a hash of the tenant, the model alias and the request body without the keys that do
not change the answer (`stream`, `stream_options`, `user`, `metadata`, `store`): messages, tools, response format
and every sampling parameter are part of it, so tenants never share an entry. A request with `temperature > 0`
is not cached unless `cache_nondeterministic = true`, and neither is one without `temperature`: the upstream
samples it at its default, 1 (OpenAI's, Anthropic's), and a client asking twice expects two answers.

Entries are whole chat completions (a streamed miss is stored reassembled), kept `ttl_s` in a memory-bounded LRU
in the worker (`max_mb`; a larger entry is not cached), or in Redis when `[server] redis_url` is set (shared by
every worker). A hit is answered as the request asks (JSON, or a stream of chunks), with `X-Insource-Cache:
hit`, and metered as `served_by = "cache"`, cost 0, the teacher's price of its tokens as `cost_avoided_usd`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from insource.config import Config
from insource.metering.usage import Usage, cost_usd, parse_usage
from insource.service.request import Outcome, RequestFacts

log = logging.getLogger("insource.cache")

CACHE_HEADER = "X-Insource-Cache"
SERVED_BY_CACHE = "cache"
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store"})


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    async def close(self) -> None: ...


class LocalCache:
    """A memory-bounded LRU with a time to live, in the worker."""

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: bytes) -> None:
        cost = len(key) + len(value)
        if cost > self.max_bytes:
            return  # larger than the whole cache: not cached
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        self.size += cost
        while self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _expires, value = self._entries.pop(key)
        self.size -= len(key) + len(value)

    async def close(self) -> None:
        self._entries.clear()
        self.size = 0


class RedisCache:
    """Entries in Redis, shared by every worker (`SET ... PX ttl`); a Redis failure is a miss, never an error."""

    def __init__(self, url: str, max_bytes: int, ttl_s: float, prefix: str = "insource:cache:") -> None:
        import redis.asyncio as aioredis

        self.client: Any = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.max_bytes = max_bytes
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.prefix = prefix
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._pending: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(self.prefix + key)
        except self._errors as exc:  # a cache that is down is a miss; logged
            log.warning("response cache (redis) unavailable: %s", type(exc).__name__)
            return None
        return bytes(value) if value is not None else None

    def put(self, key: str, value: bytes) -> None:
        if len(key) + len(value) > self.max_bytes:
            return
        task = asyncio.get_running_loop().create_task(self._set(key, value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set(self, key: str, value: bytes) -> None:
        try:
            await self.client.set(self.prefix + key, value, px=self.ttl_ms)
        except self._errors as exc:  # not cached this time; logged
            log.warning("response cache (redis) unavailable: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.client.aclose()


def make_cache(cfg: Config, redis_url: str | None) -> CacheBackend | None:
    if not cfg.cache.enabled:
        return None
    max_bytes = int(cfg.cache.max_mb * 1024 * 1024)
    if redis_url is not None:
        return RedisCache(redis_url, max_bytes, cfg.cache.ttl_s)
    return LocalCache(max_bytes, cfg.cache.ttl_s)


def cache_key(cfg: Config, facts: RequestFacts, body: dict[str, Any]) -> str | None:
    """The request's cache key, or None when it may not be cached (off for its model and tenant, or sampled)."""
    model = cfg.models.get(facts.model or "")
    tenant = cfg.tenants.get(facts.key.tenant)
    if not ((model is not None and model.cache) or (tenant is not None and tenant.cache)):
        return None
    if not cfg.cache.cache_nondeterministic and _sampled(body.get("temperature")):
        return None
    kept = {k: v for k, v in body.items() if k not in _NOT_IN_KEY and k != "model"}
    try:
        blob = orjson.dumps([facts.key.tenant, facts.model, kept], option=orjson.OPT_SORT_KEYS)
    except TypeError:  # e.g. a number too large for JSON: such a request is simply not cached
        return None
    return hashlib.sha256(blob).hexdigest()


def _sampled(temperature: Any) -> bool:
    """Whether the upstream samples: any temperature but 0 (none, or null, is the upstream's default of 1)."""
    return not (isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature <= 0)


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def stream_entry(response: dict[str, Any], usage: Usage | None) -> bytes:
    """A streamed answer, reassembled, as the cache keeps it: a chat completion."""
    entry = {**response, "created": int(time.time())}
    if usage is not None:
        entry["usage"] = usage_dict(usage)
    return orjson.dumps(entry)


def meter_hit(facts: RequestFacts, data: dict[str, Any], price: Any) -> Outcome:
    """A hit's outcome: served by the cache, no cost, the teacher's price of its tokens avoided."""
    usage = parse_usage(data.get("usage")) or Usage()
    avoided = cost_usd(usage, price) if price is not None else 0.0
    return Outcome(200, None, usage, SERVED_BY_CACHE, ttft_ms=facts.elapsed_ms(), cost_avoided_usd=avoided)


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def replay_stream(data: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """A cached completion as the chunks a streamed answer is made of."""
    base = {
        "id": data.get("id"),
        "object": "chat.completion.chunk",
        "created": data.get("created", int(time.time())),
        "model": data.get("model"),
    }
    choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
    first, last = [], []
    for pos, choice in enumerate(choices):
        index = choice.get("index", pos)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        if message.get("content") is not None:
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
        first.append({"index": index, "delta": delta, "finish_reason": None})
        last.append({"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"})
    yield _sse({**base, "choices": first})
    yield _sse({**base, "choices": last})
    if include_usage and data.get("usage"):
        yield _sse({**base, "choices": [], "usage": data["usage"]})
    yield b"data: [DONE]\n\n"
