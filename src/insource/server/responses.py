"""Responses the handlers return: raw JSON bytes, and an SSE stream that notices client disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Scope, Send

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _headers(base: list[tuple[bytes, bytes]], extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return base + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]


class RawJSON:
    """Send pre-serialised JSON bytes (upstream bytes are relayed without re-serialising)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(JSON_HEADERS, self.headers)
        headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class SSEResponse:
    """Relay events one by one (each flushed at once). A client disconnect cancels the relay, whose
    own cleanup then meters the request."""

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        self.events = events
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _headers(SSE_HEADERS, self.headers)})
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(self._watch(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _pump(self, send: Send) -> None:
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
