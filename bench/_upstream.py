"""A deliberately cheap OpenAI-compatible upstream for benchmarks: raw ASGI on uvicorn (uvloop + httptools).

Every body is serialised once at import time; a request costs one body read and a substring test.

* ``POST /v1/chat/completions`` — a chat completion (with ``usage``), or, when the body contains
  ``"stream":true``, an SSE stream: one role chunk, ``--chunks`` content chunks, a finish chunk, a usage
  chunk (only when the body asks ``"include_usage":true``, as the gateway always does) and ``[DONE]``.
  Each SSE event is sent as its own ASGI message (its own write), as a real upstream flushes each token.
* anything else — 404.

``--latency-ms N`` waits N ms (``asyncio.sleep``) before answering, as a real upstream's time to first token.

Run: ``python bench/_upstream.py --port 9000 [--chunks 16] [--latency-ms 20]`` (the benchmark starts it itself).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_700_000_000
WORDS = [
    "Sure",
    ",",
    " here",
    " is",
    " a",
    " short",
    " answer",
    " to",
    " your",
    " question",
    ":",
    " the",
    " refund",
    " was",
    " issued",
    " today",
    ".",
    " Anything",
    " else",
    "?",
]


def _completion(n_words: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS[:n_words]), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 42,
                "completion_tokens": n_words,
                "total_tokens": 42 + n_words,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        }
    )


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _stream_events(n_chunks: int, with_usage: bool) -> list[bytes]:
    base = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }
    events = [
        _event(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            }
        )
    ]
    for i in range(n_chunks):
        events.append(
            _event(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": WORDS[i % len(WORDS)]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        )
    events.append(_event({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}))
    if with_usage:
        events.append(
            _event(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 42,
                        "completion_tokens": n_chunks,
                        "total_tokens": 42 + n_chunks,
                        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                    },
                }
            )
        )
    events.append(b"data: [DONE]\n\n")
    return events


def make_app(n_chunks: int = 16, latency_ms: float = 0.0) -> Any:
    delay = latency_ms / 1000
    completion = _completion(12)
    json_start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(completion)).encode())],
    }
    json_body = {"type": "http.response.body", "body": completion}
    sse_start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")],
    }
    streams = {
        flag: [{"type": "http.response.body", "body": e, "more_body": True} for e in _stream_events(n_chunks, flag)]
        for flag in (False, True)
    }
    end = {"type": "http.response.body", "body": b"", "more_body": False}
    not_found = orjson.dumps(
        {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}}
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/v1/chat/completions":
            await send(
                {"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": not_found})
            return
        if delay:
            await asyncio.sleep(delay)
        if b'"stream":true' not in body and b'"stream": true' not in body:
            await send(json_start)
            await send(json_body)
            return
        await send(sse_start)
        for event in streams[b'"include_usage":true' in body or b'"include_usage": true' in body]:
            await send(event)
        await send(end)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before answering (time to first token)")
    args = parser.parse_args()
    config = uvicorn.Config(
        make_app(args.chunks, args.latency_ms),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
