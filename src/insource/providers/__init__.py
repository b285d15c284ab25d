"""Providers: one module per upstream kind. Every kind, built-in or third-party, is found the same way: an
entry point in the `insource.providers` group naming a factory `(name, ProviderConfig) -> Provider` (as
simonw/llm finds its model plugins). insource's own are declared in its pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from insource.config import PROVIDER_GROUP, Config, ProviderConfig
from insource.errors import ConfigError
from insource.providers.base import Provider, UpstreamResponse, UpstreamStream

ProviderFactory = Callable[[str, ProviderConfig], Provider]

__all__ = ["Provider", "ProviderFactory", "UpstreamResponse", "UpstreamStream", "build_providers", "factory"]


def _builtin(kind: str) -> ProviderFactory | None:
    """The built-in factories, for a source tree that runs without its package metadata."""
    if kind == "openai":
        from insource.providers.openai import OpenAIProvider

        return OpenAIProvider
    if kind == "azure":
        from insource.providers.azure import AzureProvider

        return AzureProvider
    return None


def factory(kind: str) -> ProviderFactory:
    """The factory registered for `kind` (loaded from its entry point on first use)."""
    for ep in entry_points(group=PROVIDER_GROUP, name=kind):
        loaded: ProviderFactory = ep.load()
        return loaded
    found = _builtin(kind)
    if found is None:
        raise ConfigError(f"no provider plugin installed for kind {kind!r} (entry point group {PROVIDER_GROUP!r})")
    return found


def build_providers(cfg: Config) -> dict[str, Provider]:
    return {name: factory(p.kind)(name, p) for name, p in cfg.providers.items()}
