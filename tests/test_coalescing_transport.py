"""`insource serve` sends a response's status line, headers and body in one write (`server/protocol.py`)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import start_gateway, stop_gateway

from insource.server.protocol import CoalescingTransport


class RecordingTransport:
    """Just enough of an asyncio transport to see what reaches it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_response_head_goes_out_with_its_body_in_one_write() -> None:
    async def main() -> None:
        inner = RecordingTransport()
        t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(HEAD)
        assert inner.writes == [] and t.get_write_buffer_size() == len(HEAD)
        t.write(b"{}")
        assert inner.writes == [HEAD + b"{}"]  # at once, no turn of the event loop
        t.write(b"more")  # anything that is not a response head is written through
        assert inner.writes[-1] == b"more"
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the wrapped transport's
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # an interim answer the client waits for: never held
        assert inner.writes[-1] == b"HTTP/1.1 100 Continue\r\n\r\n"

    asyncio.run(main())


def test_a_stream_head_goes_out_after_its_callback_and_a_lone_head_at_close() -> None:
    async def main() -> None:
        inner = RecordingTransport()
        t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        t.write(chunked)
        assert inner.writes == []
        await asyncio.sleep(0)
        assert inner.writes == [chunked]  # the caller sees the stream start before its first chunk
        t.write(HEAD)
        t.close()  # a head held when the connection closes is sent first
        assert inner.writes[-1] == HEAD and inner.closed
        t.write(HEAD)
        t.write(b"late")
        assert inner.writes[-1] == HEAD  # nothing is written to a closed transport

    asyncio.run(main())


def test_abort_drops_what_is_pending() -> None:
    async def main() -> None:
        inner = RecordingTransport()
        t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(HEAD)
        t.abort()
        await asyncio.sleep(0)
        assert inner.writes == [] and inner.aborted

    asyncio.run(main())


def test_serve_runs_uvicorn_with_the_coalescing_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from insource.cli import _register, app

    _register()
    import insource.server.runner as runner

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kwargs: seen.update(kwargs))  # several workers
    monkeypatch.setattr(runner, "run_one_worker", lambda target, **kwargs: seen.update(kwargs))  # one worker
    config = tmp_path / "insource.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/insource.db"\n')
    res = CliRunner().invoke(app, ["serve", "--config", str(config), "--port", "1"])
    assert res.exit_code == 0, res.output
    assert seen["http"] == "insource.server.protocol:CoalescingHttpToolsProtocol"


def _read_head(sock: socket.socket) -> bytes:
    """Bytes received until a response's head has ended (with whatever of its body came along)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    return data


def test_a_served_answer_is_whole_through_the_protocol(tmp_path: Path) -> None:
    """Through a real `insource serve`: on one keep-alive connection, a HEAD answer (a head with no body) arrives,
    then whole answers, headers then exactly their body."""
    config = tmp_path / "insource.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/insource.db"\n')
    gw = start_gateway(config)
    try:
        port = int(gw.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # a head with no body to follow it
            data = _read_head(sock)
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n")
            body = b'{"model": "gpt-4o-mini", "messages": []}'
            head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            for _ in range(2):  # twice on one keep-alive connection
                sock.sendall(head.encode() + body)
                headers, _, payload = _read_head(sock).partition(b"\r\n\r\n")
                fields = dict(h.split(b": ", 1) for h in headers.split(b"\r\n")[1:])
                while len(payload) < int(fields[b"content-length"]):
                    payload += sock.recv(65536)
                assert headers.startswith(b"HTTP/1.1 401 ")  # no key: the OpenAI-style error
                assert len(payload) == int(fields[b"content-length"]) and b'"error"' in payload
    finally:
        stop_gateway(gw)
