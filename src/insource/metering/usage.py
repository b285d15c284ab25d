"""Usage normalisation and cost: pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from insource.metering.prices import ModelPrice


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0  # includes cached tokens, as in OpenAI's usage
    cached_tokens: int = 0  # the cached subset of prompt_tokens
    completion_tokens: int = 0  # includes reasoning tokens
    reasoning_tokens: int = 0  # the reasoning subset of completion_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# No request is billed 2^31 tokens: a larger count from an upstream is a bug, clamped so the usage record still
# fits every store's INTEGER column (PostgreSQL's is 32-bit) instead of being refused and lost.
MAX_TOKENS = 2**31 - 1


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return 0
    return min(value, MAX_TOKENS)


def parse_usage(raw: Any) -> Usage | None:
    """Normalise an upstream `usage` block (OpenAI, Azure, vLLM, llama.cpp variants)."""
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens") or raw.get("input_tokens"))
    completion = _int(raw.get("completion_tokens") or raw.get("output_tokens"))
    pdet = raw.get("prompt_tokens_details") or raw.get("input_tokens_details") or {}
    cdet = raw.get("completion_tokens_details") or raw.get("output_tokens_details") or {}
    cached = _int(pdet.get("cached_tokens")) if isinstance(pdet, dict) else 0
    reasoning = _int(cdet.get("reasoning_tokens")) if isinstance(cdet, dict) else 0
    return Usage(prompt, min(cached, prompt), completion, min(reasoning, completion))


def cost_usd(usage: Usage, price: ModelPrice) -> float:
    """Exact cost: uncached prompt at the input price, cached at the cached price, completion at output."""
    uncached = usage.prompt_tokens - usage.cached_tokens
    return (
        uncached * price.input_per_mtok
        + usage.cached_tokens * price.cached_input_per_mtok
        + usage.completion_tokens * price.output_per_mtok
    ) / 1_000_000


def estimate_prompt_tokens(body_len: int) -> int:
    """A cheap upper-leaning estimate of prompt tokens from the request size (about 4 bytes a token)."""
    return body_len // 4 + 8
