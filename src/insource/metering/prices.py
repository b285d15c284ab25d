"""Prices: the versioned table shipped in the package, overridden per model by config."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from insource.config import Config, ModelConfig
from insource.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float
    source: str  # "config", "table:VERSION" or "free"
    batch_input_per_mtok: float | None = None  # the Batch API's prices; None: BATCH_DISCOUNT of the list price
    batch_output_per_mtok: float | None = None

    @staticmethod
    def free() -> ModelPrice:
        return ModelPrice(0.0, 0.0, 0.0, "free")


BATCH_DISCOUNT = 0.5  # OpenAI's Batch API: 50% of the list price, input and output


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def batch_price(price: ModelPrice) -> ModelPrice:
    """The price of a Batch API request: `batch_input_per_mtok` / `batch_output_per_mtok` when set (config or
    table), else half the list price; cached input keeps its ratio to input."""
    batch_in = price.batch_input_per_mtok
    if batch_in is None:
        batch_in = price.input_per_mtok * BATCH_DISCOUNT
    batch_out = price.batch_output_per_mtok
    if batch_out is None:
        batch_out = price.output_per_mtok * BATCH_DISCOUNT
    ratio = price.cached_input_per_mtok / price.input_per_mtok if price.input_per_mtok else 0.0
    return ModelPrice(batch_in, batch_out, batch_in * ratio, f"{price.source}:batch", batch_in, batch_out)


@cache
def price_table() -> tuple[str, dict[str, ModelPrice]]:
    raw = tomllib.loads(resources.files("insource.metering").joinpath("prices.toml").read_text("utf-8"))
    version = str(raw["version"])
    table = {
        name: ModelPrice(
            float(p["input_per_mtok"]),
            float(p.get("output_per_mtok", 0.0)),
            float(p.get("cached_input_per_mtok", p["input_per_mtok"])),
            f"table:{version}",
            _optional(p.get("batch_input_per_mtok")),
            _optional(p.get("batch_output_per_mtok")),
        )
        for name, p in raw["models"].items()
    }
    return version, table


def price_for(alias: str, model: ModelConfig) -> ModelPrice | None:
    """The price of a model alias: config first, then the table (by alias, then first target's model)."""
    if model.free:
        return ModelPrice.free()
    if model.price is not None:
        p = model.price
        return ModelPrice(
            p.input_per_mtok, p.output_per_mtok, p.cached, "config", p.batch_input_per_mtok, p.batch_output_per_mtok
        )
    _, table = price_table()
    if alias in table:
        return table[alias]
    upstream = model.targets[0].partition(":")[2]
    return table.get(upstream)


def resolve_prices(cfg: Config) -> dict[str, ModelPrice]:
    """Prices for every configured model; refuses a model without a price unless marked free."""
    prices: dict[str, ModelPrice] = {}
    missing: list[str] = []
    for alias, model in cfg.models.items():
        price = price_for(alias, model)
        if price is None:
            missing.append(alias)
        else:
            prices[alias] = price
    if missing:
        raise ConfigError(
            "no price for model(s) "
            + ", ".join(repr(m) for m in missing)
            + ": add `price = { input_per_mtok = ..., output_per_mtok = ... }` or `free = true`"
        )
    return prices
