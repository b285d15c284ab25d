"""Classifier students: sentence embeddings (int8 ONNX MiniLM) + a calibrated linear head.

`classifier` uses the frozen base encoder (exported once, cached beside the registry). `classifier-strong`
first fine-tunes the encoder on the teacher's answers (see `finetune.py`) and exports it. Both
fit a logistic-regression head, temperature-scale it on validation and mix in nearest-neighbour evidence
and a lexical view (TF-IDF n-grams, `lexical.py`) when that lowers the validation risk–coverage area.
Training embeddings come from the same int8 ONNX encoder (one input per run) that serves, so evaluation
measures exactly what will answer traffic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from insource.capture.dataset_read import Dataset, Example
from insource.registry.embedding import embed_examples, encoder_cache
from insource.registry.encoder import ENCODER_FILE, TOKENIZER_FILE, Matrix, OnnxEncoder
from insource.registry.entries import ENCODER_INFO
from insource.registry.head import Head
from insource.registry.lexical import Lexical
from insource.registry.progress import Step


def install_encoder(encoder_dir: Path, folder: Path) -> None:
    """Copy the exported encoder into a model folder: copies, never links, so damage to one version's
    files (or to the cache) stays inside that one folder."""
    import shutil

    for name in (ENCODER_FILE, TOKENIZER_FILE, ENCODER_INFO):
        shutil.copyfile(encoder_dir / name, folder / name)


def label_indices(examples: list[Example], index: dict[str, int]) -> np.ndarray:
    return np.array([index.get(ex.output, -1) for ex in examples], dtype=np.int64)


def train_lexical(ds: Dataset, index: dict[str, int], step: Step) -> tuple[Lexical | None, Matrix | None]:
    """Fit the lexical view on train and temperature-scale it on val; returns it and its val probs
    (None, None when the inputs give it nothing to learn from)."""
    from insource.distill.fit import fit_temperature
    from insource.distill.lexical_fit import fit_lexical

    step("lexical view: TF-IDF n-grams + logistic regression")
    train, val = ds.split("train"), ds.split("val")
    lex = fit_lexical([ex.input for ex in train], label_indices(train, index), len(index))
    if lex is None:
        return None, None
    val_texts = [ex.input for ex in val]
    lex.temperature = fit_temperature(lex.logits(val_texts), label_indices(val, index))
    return lex, lex.proba(val_texts)


def train_head_on(
    ds: Dataset, folder: Path, encoder_dir: Path, cache_root: Path, *, knn: bool, lexical: bool, step: Step
) -> dict[str, Any]:
    """Embed train/val with the encoder in `folder`, fit + calibrate the head (and the lexical view it may
    mix in), save them; returns info."""
    from insource.distill.fit import fit_head

    labels = sorted({ex.output for ex in ds.split("train")})
    index = {label: i for i, label in enumerate(labels)}
    encoder = OnnxEncoder(folder, workers=os.cpu_count() or 1)
    cache = encoder_cache(cache_root, encoder_dir)
    step(f"embedding {len(ds.split('train')) + len(ds.split('val'))} inputs")
    train_x = embed_examples(encoder, cache, ds.split("train"), step)
    val_x = embed_examples(encoder, cache, ds.split("val"), step)
    train_y, val_y = label_indices(ds.split("train"), index), label_indices(ds.split("val"), index)
    lex, val_lex = train_lexical(ds, index, step) if lexical else (None, None)
    head, fit_info = fit_head(
        train_x, train_y, val_x, val_y, len(labels), knn=knn, val_lexical=val_lex, labels=labels, step=step
    )
    if lex is not None and head.lexical_weight > 0:  # kept only when validation chose to mix it in
        lex.save(folder)
    head.save(folder)
    head.save_onnx(folder)
    metrics = _val_metrics(head, val_x, val_y, val_lex)
    fit_info.update(embedding_cache={"hits": cache.hits, "misses": cache.misses})
    return {"labels": labels, "head": fit_info, "metrics": metrics}


def _val_metrics(head: Head, val_x: Matrix, val_y: np.ndarray, val_lex: Matrix | None) -> dict[str, Any]:
    from insource.evals.metrics import expected_calibration_error

    idx, conf, ood = head.predict(val_x, val_lex)
    correct = idx == val_y
    return {
        "val_n": len(val_y),
        "val_agreement": round(float(correct.mean()), 5) if len(val_y) else None,
        "val_ece": round(expected_calibration_error(conf, correct), 5) if len(val_y) else None,
        "val_ood_rate": round(float(ood.mean()), 5) if len(val_y) else None,
    }
