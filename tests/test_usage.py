"""Usage normalisation: the upstream's counts, bounded so that a usage record is always storable."""

from __future__ import annotations

from insource.metering.usage import MAX_TOKENS, Usage, parse_usage


def test_openai_and_responses_style_blocks() -> None:
    openai = {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    assert parse_usage(openai) == Usage(120, 100, 30, 20)
    responses = {"input_tokens": 5, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 9}}
    assert parse_usage(responses) == Usage(5, 5, 7, 0)  # a cached count above the prompt is capped
    assert parse_usage(None) is None and parse_usage([1]) is None


def test_absurd_counts_are_clamped_or_ignored() -> None:
    huge = {"prompt_tokens": 2**63, "completion_tokens": 10**30, "prompt_tokens_details": {"cached_tokens": 2**40}}
    assert parse_usage(huge) == Usage(MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, 0)
    odd = {"prompt_tokens": True, "completion_tokens": -4, "completion_tokens_details": {"reasoning_tokens": 1.5}}
    assert parse_usage(odd) == Usage(0, 0, 0, 0)
