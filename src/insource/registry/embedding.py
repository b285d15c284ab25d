"""Embeddings of examples through a registered encoder, with the content-hash cache: shared by training
(`distill/`) and scoring (`evals/`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from insource.registry.embed_cache import EmbeddingCache
from insource.registry.encoder import Matrix, OnnxEncoder
from insource.registry.progress import Step

EMBED_CHUNK = 512


class HasInput(Protocol):
    """An example as the dataset reader gives it: only its input text is embedded."""

    @property
    def input(self) -> str: ...


def embed_examples(
    encoder: OnnxEncoder, cache: EmbeddingCache, examples: Sequence[HasInput], step: Step | None = None
) -> Matrix:
    """Embeddings of the examples' inputs; only inputs not in the cache are encoded (in chunks, reported)."""

    def encode(texts: list[str]) -> Matrix:
        if step is None or len(texts) <= EMBED_CHUNK:
            return encoder.encode(texts)
        parts = []
        for i in range(0, len(texts), EMBED_CHUNK):
            step(f"embedding {len(texts)} new inputs", done=i, total=len(texts))
            parts.append(encoder.encode(texts[i : i + EMBED_CHUNK]))
        return np.concatenate(parts).astype(np.float32)

    return cache.embed([ex.input for ex in examples], encode, encoder.dim)


def encoder_cache(cache_root: Path, encoder_dir: Path) -> EmbeddingCache:
    """The embedding cache of one encoder, keyed by the hash of the weights it was exported from."""
    from insource.registry.entries import read_encoder_info

    return EmbeddingCache(cache_root / "embeddings" / str(read_encoder_info(encoder_dir)["source"]))
