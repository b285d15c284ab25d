"""uvicorn's httptools protocol, with one change: what a connection writes during one event-loop callback reaches
the socket in one write.

uvicorn writes a response's status line and headers, then its body, as two `transport.write` calls, and uvloop
sends each at once when the socket's buffer is empty: two `send` syscalls and two TCP segments for every answer
(and two reads and wake-ups for the client). `CoalescingTransport` wraps the connection's transport: the first
write of a callback is kept and a flush scheduled right after it (`loop.call_soon`); writes until then are joined
to it. A close flushes first; `abort` drops what is pending, as the real transport does. Streams are unchanged
in effect (each chunk arrives in its own callback and is sent right after it).

`insource serve` passes `HTTP_PROTOCOL` to uvicorn's `http` option (an import string, so every worker process
loads it).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HTTP_PROTOCOL = "insource.server.protocol:CoalescingHttpToolsProtocol"


class CoalescingTransport:
    """A transport whose writes within one event-loop callback become one write of the wrapped transport."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(c) for c in self._pending or ())

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, resume_reading, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol` writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
