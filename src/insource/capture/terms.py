"""Terms profiles: may a provider's outputs train a model? Shipped as data (terms.toml), overridable in config."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

from insource.config import Config
from insource.errors import ConfigError

Category = Literal["any", "internal", "none"]
CATEGORIES: tuple[Category, ...] = ("any", "internal", "none")


@dataclass(frozen=True, slots=True)
class TermsProfile:
    name: str
    category: Category
    summary: str
    clause: str = ""
    source: str = ""
    date: str = ""
    origin: str = "builtin"  # "builtin" | "config" | "unknown"

    def allows(self, purpose: str, *, allow_internal: bool = False) -> bool:
        """Whether examples under this profile may be used for `purpose` ("train" or "eval")."""
        if purpose == "eval":
            return True
        if self.category == "any":
            return True
        return self.category == "internal" and allow_internal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _builtin() -> dict[str, dict[str, Any]]:
    text = resources.files("insource.capture").joinpath("terms.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _make(name: str, data: dict[str, Any], origin: str) -> TermsProfile:
    category = data.get("category")
    if category not in CATEGORIES:
        raise ConfigError(f"terms profile {name!r}: category must be one of {', '.join(CATEGORIES)}")
    return TermsProfile(
        name=name,
        category=category,
        summary=str(data.get("summary", "")).strip(),
        clause=str(data.get("clause", "")).strip(),
        source=str(data.get("source", "")),
        date=str(data.get("date", "")),
        origin=origin,
    )


def load_profiles(cfg: Config | None = None) -> dict[str, TermsProfile]:
    """The shipped profiles, with `[terms.NAME]` from the config overriding or adding profiles."""
    profiles = {name: _make(name, data, "builtin") for name, data in _builtin().items()}
    if cfg is not None:
        for name, override in cfg.terms.items():
            profiles[name] = _make(name, override.model_dump(), "config")
    return profiles


def unknown_profile(name: str) -> TermsProfile:
    """A profile name referenced by data but defined nowhere: treated as the strictest."""
    return TermsProfile(
        name=name,
        category="none",
        summary=(
            f"unknown terms profile {name!r}: treated as 'none' (no training) until it is defined "
            f'in the config under [terms."{name}"] or a shipped profile is used'
        ),
        clause=f"no terms profile named {name!r} is defined",
        origin="unknown",
    )


def resolve(profiles: dict[str, TermsProfile], name: str | None) -> TermsProfile:
    if name and name in profiles:
        return profiles[name]
    return unknown_profile(name or "")
