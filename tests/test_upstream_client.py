"""The pooled upstream HTTP client's deadlines, against a raw TCP server on 127.0.0.1 that answers as told:
no head (the time-to-first-token deadline), a head then a body that never ends (the total deadline), a whole
answer (the connection is kept and reused, and no deadline fires after the answer)."""

from __future__ import annotations

import asyncio
import time

import pytest

from insource.config import ProviderConfig
from insource.errors import UpstreamTimeout
from insource.providers.http import HttpClient

BODY = b'{"ok":true}'
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n" + BODY
HEAD_ONLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99\r\n\r\n{"


async def _serve(answer: bytes | None) -> tuple[asyncio.Server, list[int]]:
    """A server that reads each request and writes `answer` (None: nothing); counts connections."""
    conns: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if answer is not None:
                writer.write(answer)

    return await asyncio.start_server(handle, "127.0.0.1", 0), conns


def _client(server: asyncio.Server) -> tuple[HttpClient, str]:
    port = server.sockets[0].getsockname()[1]
    cfg = ProviderConfig(kind="openai", base_url=f"http://127.0.0.1:{port}/v1", ttft_timeout_s=0.3, total_timeout_s=0.6)
    return HttpClient("up", cfg, None), f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.mark.parametrize(("answer", "least", "message"), [(None, 0.3, "no response within"), (HEAD_ONLY, 0.6, "total")])
def test_a_silent_upstream_times_out_at_its_deadline(answer: bytes | None, least: float, message: str) -> None:
    async def main() -> None:
        server, _ = await _serve(answer)
        client, url = _client(server)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=message):
            await client.post_json(url, {"Content-Type": "application/json"}, {"x": 1})
        assert least <= time.monotonic() - started < least + 5
        await client.close()
        server.close()

    asyncio.run(main())


def test_an_answered_request_keeps_its_connection_and_no_deadline_fires_later() -> None:
    async def main() -> None:
        server, conns = await _serve(WHOLE)
        client, url = _client(server)
        for _ in range(3):
            got = await client.post_json(url, {"Content-Type": "application/json"}, {"x": 1})
            assert got.status == 200 and got.body == BODY
        await asyncio.sleep(0.8)  # past both deadlines of the requests above
        got = await client.post_json(url, {"Content-Type": "application/json"}, {"x": 1})
        assert got.status == 200 and got.body == BODY
        assert len(conns) == 1  # one kept-alive connection throughout
        await client.close()
        server.close()

    asyncio.run(main())
