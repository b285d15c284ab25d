"""The provider protocol: one small surface every upstream implements.

A provider turns an OpenAI-shaped request body into an upstream call. It never decides routing,
metering or retries: the service layer does. Errors are mapped to `insource.errors` here, at the
boundary, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from insource.config import ProviderConfig


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes  # the upstream's bytes, relayed unchanged
    data: dict[str, Any]  # the parsed body
    headers: dict[str, str] = field(default_factory=dict)


class UpstreamStream(Protocol):
    """An open SSE stream whose status was 200. Iterating yields whole events (bytes ending in a blank line)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str
    config: ProviderConfig

    async def complete(self, model: str, body: dict[str, Any]) -> UpstreamResponse: ...

    async def stream(self, model: str, body: dict[str, Any]) -> UpstreamStream: ...

    async def embed(self, model: str, body: dict[str, Any]) -> UpstreamResponse: ...

    async def close(self) -> None: ...
