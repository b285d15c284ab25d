"""OpenAI's Files and Batch APIs on an OpenAI-kind upstream (`/files`, `/batches` under its base URL).

Not on the request path: an `httpx` client (multipart uploads, which the pooled JSON client does not do), built
on first use, never following redirects. Upstream errors are mapped once, as for chat
(`providers.http.map_status_error`), credentials never echoed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from insource.config import ProviderConfig, resolve_secret
from insource.errors import UpstreamError, UpstreamTimeout
from insource.providers.http import map_status_error

if TYPE_CHECKING:
    import httpx

BATCH_KINDS = ("openai",)  # provider kinds whose upstreams speak OpenAI's Files and Batch APIs


class BatchUpstream:
    """One upstream's files and batches. Every method returns the upstream's JSON (or bytes) as is."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        import httpx  # imported on first use: the gateway starts without it

        self.name = name
        base = config.base_url.rstrip("/")
        for op in ("/chat/completions", "/embeddings"):
            base = base.removesuffix(op)
        self._secret = resolve_secret(config.api_key)
        headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        timeout = httpx.Timeout(config.total_timeout_s, connect=config.connect_timeout_s)
        self._client = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"upstream '{self.name}' exceeded its total timeout") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream '{self.name}' is unreachable ({type(exc).__name__})") from None
        if 300 <= response.status_code < 400:
            raise UpstreamError(f"upstream '{self.name}' answered with a redirect; redirects are never followed")
        if response.status_code >= 400:
            headers = {k.lower(): v for k, v in response.headers.items()}
            raise map_status_error(self.name, response.status_code, response.content, headers, self._secret)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream '{self.name}' returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"upstream '{self.name}' returned an unexpected JSON body")
        return parsed

    async def upload(self, filename: str, data: bytes, purpose: str) -> dict[str, Any]:
        files = {"file": (filename, data, "application/jsonl")}
        return await self._json("POST", "/files", files=files, data={"purpose": purpose})

    async def file(self, file_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/files/{file_id}")

    async def content(self, file_id: str) -> bytes:
        return (await self._send("GET", f"/files/{file_id}/content")).content

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/files/{file_id}")

    async def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json(
            "POST", "/batches", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )

    async def batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/batches/{batch_id}/cancel")
