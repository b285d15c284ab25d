"""Shared HTTP plumbing for HTTP upstreams: a small pooled HTTP/1.1 client (asyncio protocol + httptools),
timeouts, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from insource.config import ProviderConfig, resolve_secret
from insource.errors import UpstreamError, UpstreamTimeout
from insource.providers.base import UpstreamResponse

RELAYED_4XX = {400, 404, 409, 413, 415, 422}


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "[REDACTED]") if secret else text


def map_status_error(name: str, status: int, body: bytes, headers: dict[str, str], secret: str | None) -> UpstreamError:
    """Map an upstream non-2xx answer to an insource error. Credentials are never echoed."""
    if status in (401, 403):
        return UpstreamError(
            f"upstream '{name}' rejected insource's credentials ({status}); check the provider's api_key",
            status=502,
            code="upstream_auth_failed",
            retryable=False,  # the same credentials fail again: no retry, no fallback (429/5xx/timeouts only)
        )
    if status == 429:
        retry = headers.get("retry-after")
        return UpstreamError(
            f"upstream '{name}' is rate limiting (429)",
            status=429,
            code="upstream_rate_limited",
            retryable=True,
            headers={"Retry-After": retry} if retry else {},
        )
    if status in RELAYED_4XX:
        return UpstreamError(
            f"upstream '{name}' refused the request ({status})",
            status=status,
            code="upstream_bad_request",
            retryable=False,
            relay=_safe_error_body(body, secret),
        )
    if status >= 500:
        return UpstreamError(
            f"upstream '{name}' failed ({status})",
            status=503 if status == 503 else 502,
            retryable=True,
        )
    return UpstreamError(f"upstream '{name}' answered with unexpected status {status}", retryable=True)


def _safe_error_body(body: bytes, secret: str | None) -> bytes:
    """Rebuild an OpenAI error body from the upstream's, keeping only the four standard keys."""
    try:
        parsed = orjson.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
    except orjson.JSONDecodeError:
        err = None
    if not isinstance(err, dict):
        err = {"message": "the upstream refused the request"}
    param, code = err.get("param"), err.get("code")
    out = {  # every string field is scrubbed: an upstream may echo our credential in any of them
        "message": _scrub(str(err.get("message") or "the upstream refused the request"), secret),
        "type": _scrub(str(err.get("type") or "invalid_request_error"), secret),
        "param": _scrub(param, secret) if isinstance(param, str) else None,
        "code": _scrub(code, secret) if isinstance(code, str) else code if isinstance(code, int) else None,
    }
    return orjson.dumps({"error": out})


class _Expired(Exception):
    """A request's own deadline passed (set on the connection's futures by a timer: cheaper than asyncio.timeout)."""


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self._begin(False)

    def _begin(self, streaming: bool) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.chunks: deque[bytes] = deque()
        self.streaming = streaming
        self.keep_alive = True
        self.eof = False
        self.got_bytes = False
        self.error: BaseException | None = None
        self.head_done: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.eof:
            self.fail(exc or ConnectionResetError("the upstream closed the connection"))

    def fail(self, exc: BaseException) -> None:
        self.keep_alive = False
        if self.error is None:
            self.error = exc
        for fut in (self.head_done, self.done, self.waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: no "never retrieved" warning when nobody awaits it

    def expire_head(self) -> None:
        if not self.head_done.done():
            self.fail(_Expired())

    def expire_done(self) -> None:
        if not self.done.done():
            self.fail(_Expired())

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head_done.done():
            self.head_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.streaming and self.status < 300:
            self.chunks.append(body)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.eof = True
        if not self.done.done():
            self.done.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- use -----------------------------------------------------------------------------------
    def send(self, data: bytes, streaming: bool) -> None:
        self._begin(streaming)
        self.used = True
        assert self.transport is not None
        self.transport.write(data)

    def payload(self) -> bytes:
        data = b"".join(self.body)
        encoding = self.headers.get("content-encoding")
        if encoding in ("gzip", "deflate"):
            data = zlib.decompress(data, 47)
        return data


class _Pool:
    def __init__(self, scheme: str, host: str, port: int, connect_timeout: float) -> None:
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.idle: list[_Conn] = []

    async def acquire(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                lambda: _Conn(loop),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        return conn

    def release(self, conn: _Conn) -> None:
        if conn.keep_alive and conn.eof and not conn.closed and len(self.idle) < 1024:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class SSEStream:
    """Iterates SSE events from an open streamed response: per upstream read, every whole event it
    completed, joined (one downstream write per read). One timer enforces the total timeout."""

    def __init__(self, client: HttpClient, pool: _Pool, conn: _Conn, total_timeout: float) -> None:
        self._client = client
        self._pool = pool
        self._conn = conn
        self._timer = conn.loop.call_later(total_timeout, self._expire)

    def _expire(self) -> None:
        self._conn.fail(UpstreamTimeout(f"upstream '{self._client.name}' stream exceeded its total timeout"))
        self._conn.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        conn = self._conn
        buf = b""
        while True:
            if conn.chunks:
                chunk = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(_drain(conn.chunks))
            elif conn.eof:
                if buf.strip():
                    yield buf + b"\n\n"
                return
            elif conn.error is not None:
                if isinstance(conn.error, UpstreamError):
                    raise conn.error
                raise UpstreamError(f"upstream '{self._client.name}' broke the stream ({type(conn.error).__name__})")
            else:
                conn.waiter = conn.loop.create_future()
                with contextlib.suppress(OSError, httptools.HttpParserError, UpstreamError):
                    await conn.waiter  # a failure is also kept in conn.error, handled at the top of the loop
                conn.waiter = None
                continue
            if b"\r" in chunk:
                chunk = chunk.replace(b"\r\n", b"\n")
            buf = buf + chunk if buf else chunk
            cut = buf.rfind(b"\n\n")
            if cut >= 0:
                events, buf = buf[: cut + 2], buf[cut + 2 :]
                if events.strip():
                    yield events

    async def aclose(self) -> None:
        self._timer.cancel()
        self._pool.release(self._conn)  # reused only when the whole response was read


def _drain(chunks: deque[bytes]) -> list[bytes]:
    out = list(chunks)
    chunks.clear()
    return out


class HttpClient:
    """A pool of keep-alive connections per upstream origin. Redirects are never followed."""

    def __init__(self, name: str, cfg: ProviderConfig, secret: str | None) -> None:
        self.name = name
        self.cfg = cfg
        self.secret = secret
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[_Pool, bytes]] = {}

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def _target(self, url: str, headers: dict[str, str]) -> tuple[_Pool, bytes]:
        """The pool and the pre-built request head (up to `Content-Length: `) for a URL and header set."""
        key = (url, tuple(headers.items()))
        hit = self._heads.get(key)
        if hit is None:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            port = parts.port or (443 if scheme == "https" else 80)
            host = parts.hostname or ""
            origin = (scheme, host, port)
            pool = self._pools.get(origin)
            if pool is None:
                pool = self._pools[origin] = _Pool(scheme, host, port, self.cfg.connect_timeout_s)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}"]
            lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
            hit = self._heads[key] = (pool, ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1"))
        return hit

    async def _open(
        self, url: str, headers: dict[str, str], body: dict[str, Any], streaming: bool
    ) -> tuple[_Pool, _Conn]:
        pool, head = self._target(url, headers)
        data = orjson.dumps(body)
        request = head + str(len(data)).encode() + b"\r\n\r\n" + data
        for attempt in (0, 1):
            try:
                conn = await pool.acquire()
            except TimeoutError:
                raise UpstreamTimeout(f"upstream '{self.name}' did not accept a connection in time") from None
            except OSError as exc:
                raise UpstreamError(f"upstream '{self.name}' is unreachable ({type(exc).__name__})") from None
            reused = conn.used
            conn.send(request, streaming)
            timer = conn.loop.call_later(self.cfg.ttft_timeout_s, conn.expire_head)
            try:
                await conn.head_done
            except _Expired:
                conn.close()
                raise UpstreamTimeout(
                    f"upstream '{self.name}' sent no response within {self.cfg.ttft_timeout_s:g}s"
                ) from None
            except asyncio.CancelledError:
                conn.close()  # the caller went away mid-request: the connection cannot be reused
                raise
            except (OSError, httptools.HttpParserError) as exc:
                conn.close()
                if attempt == 0 and reused and not conn.got_bytes:
                    continue  # a kept-alive connection the upstream had closed: once more, on a new one
                raise UpstreamError(f"upstream '{self.name}' is unreachable ({type(exc).__name__})") from None
            finally:
                timer.cancel()
            break
        if conn.status >= 300:
            try:
                await self._wait_done(conn)
            finally:
                pool.release(conn)
            if 300 <= conn.status < 400:
                raise UpstreamError(f"upstream '{self.name}' answered with a redirect; redirects are never followed")
            raise map_status_error(self.name, conn.status, conn.payload(), conn.headers, self.secret)
        return pool, conn

    async def _wait_done(self, conn: _Conn) -> None:
        if conn.done.done():
            conn.done.result()
            return
        timer = conn.loop.call_later(self.cfg.total_timeout_s, conn.expire_done)
        try:
            await conn.done
        except _Expired:
            conn.close()
            raise UpstreamTimeout(f"upstream '{self.name}' exceeded its total timeout") from None
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, httptools.HttpParserError) as exc:
            conn.close()
            raise UpstreamError(f"upstream '{self.name}' broke the response ({type(exc).__name__})") from None
        finally:
            timer.cancel()

    async def post_json(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> UpstreamResponse:
        pool, conn = await self._open(url, headers, body, False)
        try:
            await self._wait_done(conn)
        finally:
            pool.release(conn)
        data = conn.payload()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream '{self.name}' returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"upstream '{self.name}' returned an unexpected JSON body")
        return UpstreamResponse(conn.status, data, parsed, conn.headers)

    async def open_stream(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> SSEStream:
        pool, conn = await self._open(url, headers, body, True)
        return SSEStream(self, pool, conn, self.cfg.total_timeout_s)


class HttpProvider:
    """What every HTTP provider shares: its name and config, the pooled client, and the request headers
    carrying the resolved credential (`auth_header: prefix + key`)."""

    def __init__(self, name: str, config: ProviderConfig, auth_header: str, prefix: str = "") -> None:
        self.name = name
        self.config = config
        key = resolve_secret(config.api_key)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers[auth_header] = prefix + key
        self._http = HttpClient(name, config, key)

    async def close(self) -> None:
        await self._http.close()
