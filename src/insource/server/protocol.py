"""uvicorn's httptools protocol, with one change: a response's head and body reach the socket in one write.

uvicorn writes a response's status line and headers, then its body, as two `transport.write` calls, and uvloop
sends each at once when the socket's buffer is empty: two `send` syscalls and two TCP segments for every answer
(and two reads and wake-ups for the client). `CoalescingTransport` wraps the connection's transport and holds a
response head (a final status, not `100 Continue`) until the next write, its body, then sends both in one write.
Nothing waits on the event loop for it: the head is sent when the response ends even without a body (HEAD, 204:
`CoalescingHttpToolsProtocol.on_response_complete`), when the connection closes, and, for a chunked response (a
stream, whose first chunk comes later), right after the callback that wrote it (`loop.call_soon`). `abort` drops
it, as the real transport drops its buffer.

Measured (`bench/gateway_bench.py --quick --compare`, 20 ms upstream, medians of 3 alternating runs): gateway CPU
a request json 1.301 -> 1.274 ms at concurrency 1 and 0.344 -> 0.331 at 64, stream 0.556 -> 0.498 at 64 (1,706 ->
1,872 requests/s). A first version that sent every write after its callback (`call_soon`) cost an extra turn of
the event loop per answer: +0.09 ms a request at concurrency 1.

`insource serve` passes `HTTP_PROTOCOL` to uvicorn's `http` option (an import string, so every worker process
loads it).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HTTP_PROTOCOL = "insource.server.protocol:CoalescingHttpToolsProtocol"
_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"


def _final_head(data: bytes) -> bool:
    """A response's status line and headers with a final (not 1xx) status."""
    return data[:5] == b"HTTP/" and data[9:10] != b"1" and data[-4:] == b"\r\n\r\n"


class CoalescingTransport:
    """A transport that sends a response's head together with the write that follows it."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if not self._transport.is_closing():
                self._transport.write(pending + bytes(data))
        elif isinstance(data, bytes) and _final_head(data):
            self._pending = data
            if _CHUNKED in data:  # a stream: its head goes out now, its chunks as they come
                self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._pending or b"")

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, resume_reading, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol` writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))

    def on_response_complete(self) -> None:
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()  # a head without a body (HEAD, 204, 304) is sent now
        super().on_response_complete()
