"""OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, Ollama)."""

from __future__ import annotations

from typing import Any

from insource.config import ProviderConfig
from insource.providers.base import UpstreamResponse
from insource.providers.http import HttpProvider, SSEStream


class OpenAIProvider(HttpProvider):
    kind = "openai"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config, "Authorization", "Bearer ")
        base = config.base_url
        for op in ("/chat/completions", "/embeddings"):  # a base_url holding a whole endpoint's URL
            base = base.removesuffix(op)
        self._chat = f"{base}/chat/completions"
        self._embed = f"{base}/embeddings"

    async def complete(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._chat, self._headers, {**body, "model": model})

    async def stream(self, model: str, body: dict[str, Any]) -> SSEStream:
        return await self._http.open_stream(self._chat, self._headers, {**body, "model": model})

    async def embed(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._embed, self._headers, {**body, "model": model})
