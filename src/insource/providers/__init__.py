"""Providers: one module per upstream kind, registered by kind (as a third-party plugin would be)."""

from __future__ import annotations

from collections.abc import Callable

from insource.config import Config, ProviderConfig
from insource.providers.azure import AzureProvider
from insource.providers.base import Provider, UpstreamResponse, UpstreamStream
from insource.providers.openai import OpenAIProvider

ProviderFactory = Callable[[str, ProviderConfig], Provider]

PROVIDER_KINDS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "azure": AzureProvider,
    "simulated": OpenAIProvider,  # the demo's simulated teacher speaks the OpenAI wire format
}

__all__ = ["PROVIDER_KINDS", "Provider", "UpstreamResponse", "UpstreamStream", "build_providers", "register"]


def register(kind: str, factory: ProviderFactory) -> None:
    PROVIDER_KINDS[kind] = factory


def build_providers(cfg: Config) -> dict[str, Provider]:
    return {name: PROVIDER_KINDS[p.kind](name, p) for name, p in cfg.providers.items()}
