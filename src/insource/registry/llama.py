"""llama.cpp with cheap token log-probs, for generative students (eval in process, and the served child process).

llama-cpp-python's own `logprobs` needs `logits_all=True` (the output layer run over every prompt token, each row
copied into a numpy array) and then, for every generated token, sorts the whole 49k-token vocabulary in Python
to build `top_logprobs`: measured 9.6 CPU-s per ~45-token answer of SmolLM2-135M, ~10x the generation itself.
A student only needs the log-prob of each token it chose. `LogprobLlama` records it while sampling, from the one
logits row llama.cpp computes anyway (a logits processor: max − logsumexp under greedy decoding, which is what a
student answers with), and returns the same `logprobs` shape (each token's log-prob as its own top-1). Anything
else (sampling with a temperature, penalties, a grammar, `echo`) goes to llama-cpp-python unchanged.

Imported only where llama.cpp runs (eval, the served child process): never on the gateway's request path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from llama_cpp import Llama, LogitsProcessorList


class _ChosenLogprobs:
    """A logits processor that leaves the logits alone and records the greedy token's log-prob at each step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        row = np.asarray(scores, dtype=np.float32)
        top = float(row.max())
        self.values.append(top - (top + float(np.log(np.exp(row - top).sum()))))
        return scores


def _fast_path(kwargs: dict[str, Any]) -> bool:
    return (
        kwargs.get("logprobs") is not None
        and not kwargs.get("echo")
        and float(kwargs.get("temperature", 0.8)) <= 0.0
        and not kwargs.get("logits_processor")
        and float(kwargs.get("repeat_penalty", 1.0)) == 1.0
        and not kwargs.get("frequency_penalty")
        and not kwargs.get("presence_penalty")
        and not kwargs.get("logit_bias")
        and kwargs.get("grammar") is None
    )


class LogprobLlama(Llama):
    """`Llama` whose greedy completions return token log-probs without `logits_all` or a vocabulary sort."""

    def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        if args or not _fast_path(kwargs):
            return super().create_completion(prompt, *args, **kwargs)
        recorder = _ChosenLogprobs()
        out: Any = super().create_completion(
            prompt, **{**kwargs, "logprobs": None, "logits_processor": LogitsProcessorList([recorder])}
        )
        if kwargs.get("stream"):
            return _stream_logprobs(out, recorder)
        choice = out["choices"][0]
        ids = self.tokenize(choice["text"].encode("utf-8"), add_bos=False, special=True)
        n = int(out["usage"]["completion_tokens"])
        values = recorder.values[:n]
        tokens = _token_strings(self, ids if len(ids) == n else [], n)
        choice["logprobs"] = {
            "tokens": tokens,
            "text_offset": [0] * len(values),
            "token_logprobs": values,
            "top_logprobs": [{tok: lp} for tok, lp in zip(tokens, values, strict=True)],
        }
        return out


def _stream_logprobs(chunks: Iterator[Any], recorder: _ChosenLogprobs) -> Iterator[Any]:
    """The streamed chunks with their tokens' log-probs. A chunk holds one token, or several when one character
    spans tokens: each text chunk gets the next log-prob, and the last one also any left (all but the final
    end-of-sequence token's), so it is held back until the next chunk arrives."""
    sent, held = 0, None
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice.get("finish_reason") is None:
            if held is not None:
                yield held
            sent, held = _attach(chunk, recorder.values[sent : sent + 1], sent), chunk
            continue
        if held is not None:
            end = len(recorder.values) - (1 if choice["finish_reason"] == "stop" else 0)
            _attach(held, recorder.values[sent - 1 : max(sent, end)], sent - 1)
            yield held
            held = None
        yield chunk
    if held is not None:
        yield held


def _attach(chunk: Any, values: list[float], sent: int) -> int:
    """Set `values` as the chunk's token log-probs (its text as the first token's); the count sent so far."""
    text = str(chunk["choices"][0].get("text") or "")
    tokens = [text] + [""] * (len(values) - 1)
    chunk["choices"][0]["logprobs"] = {
        "tokens": tokens,
        "text_offset": [0] * len(values),
        "token_logprobs": values,
        "top_logprobs": [{tok: lp} for tok, lp in zip(tokens, values, strict=True)],
    }
    return sent + len(values)


def _token_strings(llm: Llama, ids: list[int], n: int) -> list[str]:
    """Each completion token's text (placeholders when the text does not re-tokenize to the same count)."""
    if not ids:
        return [f"<{i}>" for i in range(n)]
    return [llm.detokenize([t], prev_tokens=ids[:i]).decode("utf-8", errors="ignore") for i, t in enumerate(ids)]
