"""OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, Ollama)."""

from __future__ import annotations

from typing import Any

from insource.config import ProviderConfig, resolve_secret
from insource.providers.base import UpstreamResponse
from insource.providers.http import HttpClient, SSEStream


class OpenAIProvider:
    kind = "openai"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        key = resolve_secret(config.api_key)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._http = HttpClient(name, config, key)
        self._chat = f"{config.base_url}/chat/completions"
        self._embed = f"{config.base_url}/embeddings"

    async def complete(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._chat, self._headers, {**body, "model": model})

    async def stream(self, model: str, body: dict[str, Any]) -> SSEStream:
        return await self._http.open_stream(self._chat, self._headers, {**body, "model": model})

    async def embed(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._embed, self._headers, {**body, "model": model})

    async def close(self) -> None:
        await self._http.close()
