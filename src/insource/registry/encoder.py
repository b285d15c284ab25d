"""Sentence encoder runtime for serving: ONNX Runtime + tokenizers + numpy only (no torch).

The model folder holds `encoder.onnx` (int8, mean pooling and L2 normalisation inside the graph) and
`tokenizer.json`. `OnnxEncoder.encode` is thread-safe (ONNX Runtime sessions are; tokenisation is locked).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAX_TOKENS = 256
ENCODER_FILE = "encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"

Matrix = npt.NDArray[np.float32]


class OnnxEncoder:
    """Embeds texts into L2-normalised float32 vectors."""

    def __init__(self, folder: Path, workers: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self._tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tok.no_padding()
        self._tok.enable_truncation(MAX_TOKENS)
        self._lock = threading.Lock()
        opts = ort.SessionOptions()
        self.workers = max(1, workers)
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(folder / ENCODER_FILE), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self._session.get_outputs()[0].shape[-1] or 0)

    def _run(self, ids: list[list[int]]) -> Matrix:
        width = max(len(x) for x in ids)
        arr = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            arr[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {"input_ids": arr, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(arr)
        out = self._session.run(None, feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: list[str]) -> Matrix:
        """Embed `texts` (order kept), one input per session run.

        Dynamic int8 quantisation scales activations per run, so a padded batch would make an input's
        embedding depend on its neighbours; one input per run keeps training, evaluation and serving
        bit-identical. With `workers` > 1 runs proceed in parallel threads (ONNX Runtime releases the GIL).
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            encs = self._tok.encode_batch(texts) if len(texts) > 1 else [self._tok.encode(texts[0])]
        ids = [e.ids for e in encs]
        if self.workers <= 1 or len(ids) < 2 * self.workers:
            return np.vstack([self._run([seq]) for seq in ids])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as pool:
            return np.vstack(list(pool.map(lambda seq: self._run([seq]), ids, chunksize=64)))
