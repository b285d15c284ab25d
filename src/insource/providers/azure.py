"""Azure OpenAI: deployment names in the path, `api-version` in the query, the `api-key` header.

Azure's stream quirks (a first chunk with empty `choices`, content-filter-only chunks) are relayed; the
service layer's stream reader tolerates them (and gives a content-filter-only choice the empty `delta`
OpenAI clients require).

`base_url` may be what the portal shows: the resource, its `/openai` path, a deployment's path or a whole
request URL. Only the resource root is kept (the deployment comes from the model's target); an `api-version`
in its query is used unless `api_version` is set.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from insource.config import ProviderConfig
from insource.providers.base import UpstreamResponse
from insource.providers.http import HttpProvider, SSEStream


class AzureProvider(HttpProvider):
    kind = "azure"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config, "api-key")
        root, version = azure_root(config.base_url)
        self._root = f"{root}/openai"
        explicit = "api_version" in config.model_fields_set
        self._version = config.api_version if explicit or version is None else version

    def _url(self, deployment: str, op: str) -> str:
        return f"{self._root}/deployments/{quote(deployment, safe='')}/{op}?api-version={quote(self._version)}"

    @staticmethod
    def _body(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "model"}

    async def complete(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._url(model, "chat/completions"), self._headers, self._body(body))

    async def stream(self, model: str, body: dict[str, Any]) -> SSEStream:
        return await self._http.open_stream(self._url(model, "chat/completions"), self._headers, self._body(body))

    async def embed(self, model: str, body: dict[str, Any]) -> UpstreamResponse:
        return await self._http.post_json(self._url(model, "embeddings"), self._headers, self._body(body))


def azure_root(base_url: str) -> tuple[str, str | None]:
    """The resource root of an Azure `base_url` (everything from its `/openai` segment on dropped, and the
    query), and the `api-version` its query names, if any."""
    parts = urlsplit(base_url)
    segments = parts.path.split("/")
    if "openai" in segments:
        segments = segments[: segments.index("openai")]
    root = urlunsplit((parts.scheme, parts.netloc, "/".join(segments).rstrip("/"), "", ""))
    versions = parse_qs(parts.query).get("api-version")
    return root, (versions[0] if versions else None)
