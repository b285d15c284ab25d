"""Azure OpenAI: deployment names in the path, `api-version` in the query, the `api-key` header.

Azure's stream quirks (a first chunk with empty `choices`, content-filter-only chunks) are relayed
unchanged; the service layer's stream reader tolerates them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from insource.config import ProviderConfig
from insource.providers.base import UpstreamResponse
from insource.providers.http import HttpProvider, SSEStream


class AzureProvider(HttpProvider):
    kind = "azure"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config, "api-key")
        base = config.base_url
        # Tolerate a base_url that already holds the /openai path (a common Azure misconfiguration).
        self._root = base if base.endswith("/openai") else f"{base}/openai"

    def _url(self, deployment: str, op: str) -> str:
        return f"{self._root}/deployments/{quote(deployment, safe='')}/{op}?api-version={self.config.api_version}"

    @staticmethod
    def _body(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "model"}

    async def complete(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._url(model, "chat/completions"), self._headers, self._body(body))

    async def stream(self, model: str, body: dict[str, Any]) -> SSEStream:
        return await self._http.open_stream(self._url(model, "chat/completions"), self._headers, self._body(body))

    async def embed(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._url(model, "embeddings"), self._headers, self._body(body))
