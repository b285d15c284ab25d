"""Run any ASGI app with uvicorn on a loopback port in a background thread (for tests and demos)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

ASGIApp = Any  # an ASGI 3 callable; typed loosely because Starlette and raw callables both qualify


class StreamBreak(Exception):
    """Raised by the fake upstream to drop a connection mid-stream on purpose."""


def _is_stream_break(exc: BaseException | None) -> bool:
    if isinstance(exc, StreamBreak):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_stream_break(e) for e in exc.exceptions)
    return False


class _DropStreamBreaks(logging.Filter):
    """Keeps uvicorn from logging tracebacks for deliberate disconnects: StreamBreak, and the
    cancellation of in-flight requests while a ServerHandle is being force-stopped."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.stopping = 0

    def add_stopping(self, delta: int) -> None:
        with self._lock:
            self.stopping += delta

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and self.stopping > 0:
            return False
        return not _is_stream_break(exc)


_FILTER = _DropStreamBreaks()


def install_log_filter() -> None:
    """Idempotently attach the StreamBreak filter to uvicorn's error logger."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


class _Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.force_exit:
            # Drop in-flight connections (e.g. hung requests) the way a killed upstream would.
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
        await super().shutdown(sockets)


class ServerHandle:
    """A running background server. `url` is ``http://HOST:PORT``; use as a context manager or `stop()`."""

    def __init__(self, server: _Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0, graceful: bool = False) -> None:
        """Stop the server. Non-graceful (default) cancels in-flight requests, including hung ones."""
        if not graceful:
            self._server.force_exit = True
        self._server.should_exit = True
        _FILTER.add_stopping(1)
        try:
            self._thread.join(timeout)
        finally:
            _FILTER.add_stopping(-1)
        if self._thread.is_alive():
            raise RuntimeError(f"server at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0) -> ServerHandle:
    """Start `app` under uvicorn in a daemon thread on `host:port` (port 0 = a free port); wait until ready."""
    install_log_filter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"server on {host}:{bound_port} failed to start")
        time.sleep(0.002)
    return ServerHandle(server, thread, host, bound_port)
