"""FakeUpstream: an ASGI stand-in for OpenAI, Azure OpenAI and vLLM that speaks their real wire format.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models`` (Bearer auth) and the
Azure forms ``POST /openai/deployments/{deployment}/chat/completions|embeddings?api-version=...``
(``api-key`` header auth). Token counting and stream chunking follow the rule in
:mod:`insource.testing.wire`.

Control API (safe to use from the test thread while the server runs in another thread): plain
attributes (`responder`, `judge`, `delay_s`, `delay_fn`, `token_delay_s`, `hang`, `stream_break_after`,
`error_rate`, `error_status`, `cached_tokens`, `cache_min_prompt_tokens`, `reasoning_tokens`,
`system_fingerprint`, `fast`) are read per request, and `fail_next`, `requests`, `wait_for_requests`,
`release` and `reset` take a lock.

Order of checks per request: record, Azure ``api-version``, auth, JSON body, hang, delay, injected
fault (queued `fail_next` first, then `error_rate`), validation, model lookup, answer. Faults apply to
chat and embeddings requests only (not to ``/v1/models``).

Run standalone: ``python -m insource.testing.fake_upstream --port 9000 [--api-key-env NAME]
[--azure-key-env NAME] [--delay-ms N] [--token-delay-ms N] [--fast]``
(``python -m insource.demo.teacher`` takes the same options and answers as the demo's simulated teacher).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from insource.testing import wire
from insource.testing.chat_rules import InvalidRequest, make_choices, validate_chat, validate_embeddings
from insource.testing.fake_batches import FakeBatches
from insource.testing.judge import Judge, fair_judge, judge_reply
from insource.testing.server import StreamBreak, install_log_filter

Responder = Callable[[str, list[dict[str, Any]], dict[str, Any]], "str | Awaitable[str]"]
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
AZURE_AUTH_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')


class RecordedRequest(NamedTuple):
    """One received request. `headers` has lower-case names; `body` is the parsed JSON (or raw text)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str]


@dataclass
class _Fault:
    status: int
    retry_after: float | None
    body: dict[str, Any] | None


class _Reply(Exception):
    """Short-circuits a handler with a finished response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def echo_responder(model: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    """Default deterministic answer: quotes the first words of the last user message."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
    text, _ = wire.content_text(last.get("content"))
    words = text.split()
    quoted = " ".join(words[:24]) + (" ..." if len(words) > 24 else "")
    return f"This is a simulated reply from {model} to: {quoted}"


def _replayable(path: str) -> bool:
    """Fast mode replays chat and embeddings answers only (files and batches have state)."""
    return path.endswith(("/chat/completions", "/embeddings"))


class FakeUpstream:
    """A controllable fake LLM upstream; an ASGI app (call it, or pass it to `run_server`)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        azure_api_key: str | None = None,
        models: Sequence[str] | None = None,
        azure_deployments: Mapping[str, str] | None = None,
        responder: Responder | None = None,
        embedding_dim: int = 16,
        seed: int = 0,
        system_fingerprint: str = "fp_insource_fake",
        cached_tokens: float = 0,
        cache_min_prompt_tokens: int = 1024,
        reasoning_tokens: int = 0,
        report_model_version: bool = True,
        fast: bool = False,
    ) -> None:
        """`azure_api_key` defaults to `api_key`; `models` (if given) makes unknown models 404;
        `azure_deployments` maps deployment name -> model (if given, unknown deployments 404);
        `cached_tokens` is a fraction (< 1.0) or a fixed count of prompt tokens reported as cached for
        prompts of at least `cache_min_prompt_tokens`; `reasoning_tokens` is added per choice;
        `fast` replays pre-serialised responses (see `_fast_call`)."""
        self.api_key = api_key
        self.azure_api_key = azure_api_key if azure_api_key is not None else api_key
        self.models: frozenset[str] | None = frozenset(models) if models is not None else None
        self.azure_deployments = dict(azure_deployments) if azure_deployments is not None else None
        self.embedding_dim = embedding_dim
        self.report_model_version = report_model_version
        self._seed = seed
        self._defaults: dict[str, Any] = {
            "responder": responder or echo_responder,
            "system_fingerprint": system_fingerprint,
            "cached_tokens": cached_tokens,
            "cache_min_prompt_tokens": cache_min_prompt_tokens,
            "reasoning_tokens": reasoning_tokens,
            "fast": fast,
        }
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._faults: deque[_Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._fast_cache: dict[tuple[Any, ...], list[Message]] = {}
        self.batches = FakeBatches(self)  # the Files and Batch APIs (`fake_batches.py`)
        self._app = self._build_app()
        self.reset()

    # ------------------------------------------------------------ control API

    def reset(self) -> None:
        """Back to the constructor's settings: no faults, delays, hang or recorded requests; RNG reseeded."""
        with self._lock:
            self.responder: Responder = self._defaults["responder"]
            self.judge: Judge = fair_judge
            self.system_fingerprint: str = self._defaults["system_fingerprint"]
            self.cached_tokens: float = self._defaults["cached_tokens"]
            self.cache_min_prompt_tokens: int = self._defaults["cache_min_prompt_tokens"]
            self.reasoning_tokens: int = self._defaults["reasoning_tokens"]
            self.fast: bool = self._defaults["fast"]
            self.delay_s: float = 0.0
            self.delay_fn: Callable[[], float] | None = None
            self.token_delay_s: float = 0.0
            self.hang: bool = False
            self.stream_break_after: int | None = None
            self.error_rate: float = 0.0
            self.error_status: int = 500
            self._rng = random.Random(self._seed)
            self._faults.clear()
            self._requests.clear()
            self._fast_cache.clear()
            self.batches.reset()

    def fail_next(
        self, status: int, count: int = 1, retry_after: float | None = None, body: dict[str, Any] | None = None
    ) -> None:
        """Answer the next `count` chat/embeddings requests with `status` (and `Retry-After` if given)."""
        if not 400 <= status <= 599 or count < 1:
            raise ValueError("fail_next needs a 4xx/5xx status and count >= 1")
        with self._lock:
            self._faults.extend(_Fault(status, retry_after, body) for _ in range(count))

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def release(self) -> None:
        """End a `hang`: waiting requests proceed."""
        self.hang = False

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far (oldest first)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` requests have been received; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= count, timeout)

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast and scope["type"] == "http" and scope["method"] == "POST" and _replayable(scope["path"]):
            await self._fast_call(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    @property
    def app(self) -> Starlette:
        return self._app

    def _build_app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self._chat_openai, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings_openai, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/openai/deployments/{deployment}/chat/completions", self._chat_azure, methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", self._embeddings_azure, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
            *self.batches.routes(),
        ]
        handlers = {404: self._not_found, 405: self._not_found}
        return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]

    async def _not_found(self, request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/openai/"):
            return _json(wire.azure_error("404", "Resource not found"), 404)
        msg = f"Invalid URL ({request.method} {request.url.path})"
        return _json(wire.openai_error(msg, "invalid_request_error"), 404)

    async def _health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def _models(self, request: Request) -> Response:
        await self._record(request, None)
        try:
            self._check_auth(request, azure=False)
        except _Reply as reply:
            return reply.response
        names = sorted(self.models) if self.models is not None else list(DEFAULT_MODELS)
        data = [{"id": n, "object": "model", "created": 1721172741, "owned_by": "system"} for n in names]
        return _json({"object": "list", "data": data})

    # ------------------------------------------------------------ request prelude

    async def _record(self, request: Request, body: Any) -> None:
        rec = RecordedRequest(request.method, request.url.path, dict(request.headers), body, dict(request.query_params))
        with self._arrived:
            self._requests.append(rec)
            self._arrived.notify_all()

    def _check_auth(self, request: Request, azure: bool) -> None:
        if azure:
            if self.azure_api_key is not None and request.headers.get("api-key") != self.azure_api_key:
                raise _Reply(_json(wire.azure_error("401", AZURE_AUTH_MESSAGE), 401))
            return
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            got = request.headers.get("authorization", "")
            msg = "Incorrect API key provided." if got else "You didn't provide an API key in an Authorization header."
            raise _Reply(_json(wire.openai_error(msg, "invalid_request_error", None, "invalid_api_key"), 401))

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self.error_rate > 0 and self._rng.random() < self.error_rate:
                return _Fault(self.error_status, None, None)
        return None

    async def _prelude(self, request: Request, azure: bool) -> dict[str, Any]:
        """Record, check api-version/auth/body, wait (hang, delay), inject faults; return the JSON body."""
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        await self._record(request, body)
        if azure and "api-version" not in request.query_params:
            raise _Reply(_json(wire.azure_error("404", "Resource not found"), 404))
        self._check_auth(request, azure)
        if not isinstance(body, dict):
            msg = "We could not parse the JSON body of your request. The body must be a JSON object."
            raise _Reply(_json(wire.openai_error(msg, "invalid_request_error"), 400))
        while self.hang:
            await asyncio.sleep(0.005)
        delay = self.delay_s + (self.delay_fn() if self.delay_fn is not None else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        fault = self._take_fault()
        if fault is not None:
            raise _Reply(self._fault_response(fault, azure))
        return body

    def _fault_response(self, fault: _Fault, azure: bool) -> Response:
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
        if fault.retry_after is not None:
            headers["retry-after"] = str(max(0, round(fault.retry_after)))
            headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
        body = fault.body if fault.body is not None else wire.fault_body(fault.status, azure)
        return _json(body, fault.status, headers)

    def _azure_model(self, deployment: str) -> str:
        if self.azure_deployments is None:
            return deployment
        if deployment not in self.azure_deployments:
            msg = (
                "The API deployment for this resource does not exist. If you created the deployment within "
                "the last 5 minutes, please wait a moment and try again."
            )
            raise _Reply(_json(wire.azure_error("DeploymentNotFound", msg), 404))
        return self.azure_deployments[deployment]

    def _check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            raise _Reply(_json(wire.openai_error(msg, "invalid_request_error", None, "model_not_found"), 404))

    # ------------------------------------------------------------ chat

    async def _chat_openai(self, request: Request) -> Response:
        try:
            body = await self._prelude(request, azure=False)
            validate_chat(body, require_model=True)
            self._check_model(body["model"])
            return await self._chat(body["model"], body, azure=False)
        except _Reply as reply:
            return reply.response
        except InvalidRequest as exc:
            return _json(exc.body(), exc.status)

    async def _chat_azure(self, request: Request) -> Response:
        try:
            body = await self._prelude(request, azure=True)
            model = self._azure_model(request.path_params["deployment"])
            validate_chat(body, require_model=False)
            return await self._chat(model, body, azure=True)
        except _Reply as reply:
            return reply.response
        except InvalidRequest as exc:
            return _json(exc.body(), exc.status)

    async def _answer_text(self, model: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        verdict = judge_reply(self.judge, messages)  # the `judge` metric's requests (`testing/judge.py`)
        if verdict is not None:
            return verdict
        result = self.responder(model, messages, body)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, str):
            raise TypeError(f"responder returned {type(result).__name__}, expected str")
        return result

    async def _chat(self, model: str, body: dict[str, Any], azure: bool) -> Response:
        messages: list[dict[str, Any]] = body["messages"]
        text = await self._answer_text(model, messages, body)
        choices = make_choices(text, body)
        reasoning = self.reasoning_tokens * len(choices)
        completion = sum(ch.completion_tokens() for ch in choices) + reasoning
        prompt = wire.count_prompt_tokens(messages, body.get("tools"))
        cached = wire.cached_token_count(prompt, self.cached_tokens, self.cache_min_prompt_tokens)
        usage = wire.usage_block(prompt, completion, cached, reasoning)
        meta = wire.Meta(
            id=f"chatcmpl-{uuid.uuid4().hex[:29]}",
            created=int(time.time()),
            model=wire.versioned_model(model, self.report_model_version),
            fingerprint=self.system_fingerprint,
            azure=azure,
        )
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}", "openai-processing-ms": "1"}
        if body.get("stream"):
            options = body.get("stream_options") or {}
            chunks = wire.stream_chunks(meta, choices, usage, bool(options.get("include_usage")))
            events = [wire.sse(c) for c in chunks] + [wire.SSE_DONE]
            headers["cache-control"] = "no-cache"
            return StreamingResponse(self._pace(events), media_type="text/event-stream", headers=headers)
        if self.token_delay_s > 0:
            await asyncio.sleep(self.token_delay_s * (completion - reasoning))
        return _json(wire.chat_completion(meta, choices, usage), headers=headers)

    async def _pace(self, events: list[bytes]) -> AsyncIterator[bytes]:
        """Yield SSE events `token_delay_s` apart; drop the connection after `stream_break_after` events."""
        limit = self.stream_break_after
        for i, event in enumerate(events):
            if limit is not None and i >= limit:
                raise StreamBreak(f"stream_break_after={limit}")
            if i and self.token_delay_s > 0:
                await asyncio.sleep(self.token_delay_s)
            yield event

    # ------------------------------------------------------------ embeddings

    async def _embeddings_openai(self, request: Request) -> Response:
        try:
            body = await self._prelude(request, azure=False)
            validate_embeddings(body, require_model=True)
            self._check_model(body["model"])
            return self._embeddings(body["model"], body)
        except _Reply as reply:
            return reply.response
        except InvalidRequest as exc:
            return _json(exc.body(), exc.status)

    async def _embeddings_azure(self, request: Request) -> Response:
        try:
            body = await self._prelude(request, azure=True)
            model = self._azure_model(request.path_params["deployment"])
            validate_embeddings(body, require_model=False)
            return self._embeddings(model, body)
        except _Reply as reply:
            return reply.response
        except InvalidRequest as exc:
            return _json(exc.body(), exc.status)

    def _embeddings(self, model: str, body: dict[str, Any]) -> Response:
        raw = body["input"]
        items: list[Any]
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            items = [raw]
        else:
            items = list(raw)
        tokens = sum(wire.count_tokens(i) if isinstance(i, str) else len(i) for i in items)
        dim = int(body.get("dimensions") or self.embedding_dim)
        vectors = [wire.embedding_vector(item, dim) for item in items]
        as_b64 = body.get("encoding_format") == "base64"
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
        return _json(wire.embeddings_response(model, vectors, tokens, as_b64), headers=headers)

    # ------------------------------------------------------------ fast path

    async def _fast_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Benchmark mode: replay the first 200 answer for each request shape, pre-serialised.

        The shape is (path, query, stream flag, include_usage flag, credentials). Replays skip
        recording, the responder and `token_delay_s` (the whole stream goes out in one write) but still
        wait `delay_s`. While faults, `error_rate` or `hang` are active every request takes the normal path.
        """
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        creds = tuple(v for k, v in scope["headers"] if k in (b"authorization", b"api-key"))
        stream, usage = bool(_STREAM_RE.search(raw)), bool(_USAGE_RE.search(raw))
        key = (scope["path"], scope["query_string"], stream, usage, creds)
        cached = self._fast_cache.get(key)
        if cached is not None and not (self.hang or self.error_rate > 0 or self._faults):
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            for message in cached:
                await send(message)
            return
        await self._capture_into_cache(key, raw, scope, receive, send)

    async def _capture_into_cache(
        self, key: tuple[Any, ...], raw: bytes, scope: Scope, receive: Receive, send: Send
    ) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        start: Message = {}
        body_parts: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body_parts.append(message.get("body", b""))
            await send(message)

        await self._app(scope, replay, capture)
        if start.get("status") == 200:
            whole = {"type": "http.response.body", "body": b"".join(body_parts), "more_body": False}
            self._fast_cache[key] = [start, whole]


# ---------------------------------------------------------------- standalone


def _env_key(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"error: environment variable {name} is not set or empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m insource.testing.fake_upstream",
        description="Run the insource fake OpenAI / Azure OpenAI upstream (simulated, not a real model).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--api-key-env", metavar="NAME", help="require Bearer auth with the key in env var NAME")
    p.add_argument("--azure-key-env", metavar="NAME", help="require this api-key on Azure-style routes")
    p.add_argument("--delay-ms", type=float, default=0.0, help="delay before response headers (TTFT)")
    p.add_argument("--token-delay-ms", type=float, default=0.0, help="delay between stream chunks")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--models", help="comma-separated model list; other models get 404")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="replay pre-serialised responses (benchmarks)")
    return p


Attach = Callable[[FakeUpstream, argparse.Namespace], None]


def main(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None, attach: Attach | None = None
) -> int:
    """Run the fake upstream; `parser` and `attach` let a program built on it (the demo's simulated teacher)
    add options and responders."""
    args = (parser or build_parser()).parse_args(argv)
    if args.delay_ms < 0 or args.token_delay_ms < 0 or args.embedding_dim < 1:
        print("error: delays must be >= 0 and --embedding-dim >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be in 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        api_key, azure_key = _env_key(args.api_key_env), _env_key(args.azure_key_env)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    upstream = FakeUpstream(
        api_key=api_key,
        azure_api_key=azure_key,
        models=models,
        embedding_dim=args.embedding_dim,
        seed=args.seed,
        fast=args.fast,
    )
    upstream.delay_s = args.delay_ms / 1000
    upstream.token_delay_s = args.token_delay_ms / 1000
    if attach is not None:
        attach(upstream, args)
    import uvicorn

    install_log_filter()
    print(f"fake upstream (simulated) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(upstream, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
