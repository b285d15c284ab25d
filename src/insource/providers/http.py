"""Shared HTTP plumbing for HTTP upstreams: pooled keep-alive connections, timeouts, error mapping."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from insource.config import ProviderConfig
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
            retryable=True,
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
    out = {
        "message": _scrub(str(err.get("message") or "the upstream refused the request"), secret),
        "type": str(err.get("type") or "invalid_request_error"),
        "param": err.get("param") if isinstance(err.get("param"), str) else None,
        "code": err.get("code") if isinstance(err.get("code"), str | int) else None,
    }
    return orjson.dumps({"error": out})


class SSEStream:
    """Iterates whole SSE events from an aiohttp response; closes the connection when done."""

    def __init__(self, resp: aiohttp.ClientResponse, name: str, total_timeout: float) -> None:
        self._resp = resp
        self._name = name
        self._deadline = asyncio.get_running_loop().time() + total_timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        buf = b""
        content = self._resp.content
        loop = asyncio.get_running_loop()
        try:
            while True:
                left = self._deadline - loop.time()
                if left <= 0:
                    raise UpstreamTimeout(f"upstream '{self._name}' stream exceeded its total timeout")
                async with asyncio.timeout(left):
                    chunk = await content.readany()
                if not chunk:
                    if buf.strip():
                        yield buf + b"\n\n"
                    return
                buf += chunk.replace(b"\r\n", b"\n")
                while (cut := buf.find(b"\n\n")) >= 0:
                    event, buf = buf[: cut + 2], buf[cut + 2 :]
                    if event.strip():
                        yield event
        except TimeoutError:
            raise UpstreamTimeout(f"upstream '{self._name}' stream exceeded its total timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream '{self._name}' broke the stream ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        self._resp.release()
        self._resp.close()


class HttpClient:
    """One pooled aiohttp session per provider (created lazily on the running loop)."""

    def __init__(self, name: str, cfg: ProviderConfig, secret: str | None) -> None:
        self.name = name
        self.cfg = cfg
        self.secret = secret
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=60, enable_cleanup_closed=True, family=socket.AF_UNSPEC
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _open(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(total=None, connect=self.cfg.connect_timeout_s)
        try:
            async with asyncio.timeout(self.cfg.ttft_timeout_s):
                resp = await self.session().post(
                    url, data=orjson.dumps(body), headers=headers, allow_redirects=False, timeout=timeout
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{self.name}' sent no response within {self.cfg.ttft_timeout_s:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream '{self.name}' is unreachable ({type(exc).__name__})") from None
        if resp.status >= 300:
            data = await self._read(resp)
            resp.release()
            if 300 <= resp.status < 400:
                raise UpstreamError(f"upstream '{self.name}' answered with a redirect; redirects are never followed")
            raise map_status_error(
                self.name, resp.status, data, {k.lower(): v for k, v in resp.headers.items()}, self.secret
            )
        return resp

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            async with asyncio.timeout(self.cfg.total_timeout_s):
                return await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream '{self.name}' exceeded its total timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream '{self.name}' broke the response ({type(exc).__name__})") from None

    async def post_json(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> UpstreamResponse:
        resp = await self._open(url, headers, body)
        data = await self._read(resp)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream '{self.name}' returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"upstream '{self.name}' returned an unexpected JSON body")
        return UpstreamResponse(resp.status, data, parsed, {k.lower(): v for k, v in resp.headers.items()})

    async def open_stream(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> SSEStream:
        resp = await self._open(url, headers, body)
        return SSEStream(resp, self.name, self.cfg.total_timeout_s)
