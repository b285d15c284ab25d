"""Embeddings cached by content hash, so retraining does not re-embed.

Layout: `<cache>/embeddings/<encoder_id>/shard-*.npz`, each shard holding `keys` (sha256 of the text) and
`vectors` (float32). New vectors go into a new shard written to a temp file and renamed, so concurrent
distills never see a half-written shard and never collide.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, Matrix]:
        table: dict[str, Matrix] = {}
        if not self.folder.is_dir():
            return table
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                continue  # an unreadable shard is only a cache miss: its texts are embedded again
            for key, vec in zip(keys.tolist(), vectors, strict=False):
                table[str(key)] = vec
        return table

    def _save(self, keys: list[str], vectors: Matrix) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=np.array(keys), vectors=vectors.astype(np.float32))
            os.replace(tmp, self.folder / f"shard-{uuid.uuid4().hex}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def embed(self, texts: list[str], encode: Callable[[list[str]], Matrix], dim: int) -> Matrix:
        """Embeddings of `texts`, computing (and caching) only those not cached yet."""
        keys = [text_key(t) for t in texts]
        table = self._load()
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in table and key not in missing:
                missing[key] = text
        self.misses += len(missing)
        self.hits += len(texts) - len([k for k in keys if k in missing])
        if missing:
            new = encode(list(missing.values()))
            self._save(list(missing), new)
            for key, vec in zip(missing, new, strict=True):
                table[key] = vec
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([table[k] for k in keys]).astype(np.float32)
