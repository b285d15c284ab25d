"""The stronger classifier student's encoder: MiniLM fine-tuned on the teacher's answers.

A cosine-softmax classifier on the mean-pooled, normalised sentence embedding is trained end to end with
cross-entropy (label smoothing), which pulls each teacher answer's inputs together in embedding space; the
classifier layer is then dropped: the fine-tuned encoder is exported to int8 ONNX like the base one and a
fresh calibrated head (with kNN evidence) is fitted on its embeddings. torch is imported only here.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from insource.distill.dataset import Dataset
from insource.distill.export import base_model_dir, export_encoder

Step = Callable[[str], None]
EPOCHS = 4
BATCH = 32
LR_ENCODER = 8e-5
LR_HEAD = 2e-3
MAX_LEN = 64
SCALE = 20.0
SEED = 13


def _batches(n: int, lengths: list[int], rng: random.Random) -> list[list[int]]:
    """Length-bucketed shuffled batches (less padding, same randomness per epoch seed)."""
    order = sorted(range(n), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + BATCH] for i in range(0, n, BATCH)]
    rng.shuffle(batches)
    return batches


def _model(n_classes: int) -> tuple[Any, Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = base_model_dir()
    encoder = AutoModel.from_pretrained(str(src), attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(str(src))
    head = torch.nn.Linear(encoder.config.hidden_size, n_classes, bias=False)
    return encoder, tok, head


def _embed(encoder: Any, batch: dict[str, Any]) -> Any:
    import torch

    out = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def train_encoder(texts: list[str], labels: list[int], n_classes: int, out_dir: Path, step: Step) -> dict[str, Any]:
    """Fine-tune MiniLM on (text, label) and save it as a Hugging Face folder in `out_dir`."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = random.Random(SEED)
    encoder, tok, head = _model(n_classes)
    enc = tok(texts, truncation=True, max_length=MAX_LEN)
    lengths = [len(ids) for ids in enc["input_ids"]]
    params = [{"params": encoder.parameters(), "lr": LR_ENCODER}, {"params": head.parameters(), "lr": LR_HEAD}]
    optim = torch.optim.AdamW(params, weight_decay=0.01)
    steps = EPOCHS * math.ceil(len(texts) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * (1 - s / steps))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    y = torch.tensor(labels)
    encoder.train()
    last = 0.0
    for epoch in range(EPOCHS):
        for i, idx in enumerate(_batches(len(texts), lengths, rng)):
            batch = tok.pad({"input_ids": [enc["input_ids"][j] for j in idx],
                             "attention_mask": [enc["attention_mask"][j] for j in idx]}, return_tensors="pt")
            emb = _embed(encoder, batch)
            logits = SCALE * emb @ torch.nn.functional.normalize(head.weight, dim=-1).T
            loss = loss_fn(logits, y[idx])
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optim.step()
            sched.step()
            value = float(loss.item())
            last = 0.9 * last + 0.1 * value if i else value
            if i % 20 == 0:
                step(f"fine-tuning the encoder: epoch {epoch + 1}/{EPOCHS}, loss {last:.3f}")
    encoder.eval()
    encoder.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    for name in ("tokenizer.json", "config.json"):
        if not (out_dir / name).is_file():
            shutil.copy2(base_model_dir() / name, out_dir / name)
    return {"epochs": EPOCHS, "steps": steps, "final_loss": round(last, 4)}


def finetuned_encoder(ds: Dataset, folder: Path, cache_root: Path, *, step: Step) -> Path:
    """Fine-tune on the train split, export int8 ONNX into `folder`; returns the encoder folder (= `folder`)."""
    import json

    train = ds.split("train")
    labels = sorted({ex.output for ex in train})
    index = {label: i for i, label in enumerate(labels)}
    with tempfile.TemporaryDirectory(prefix=".finetune-", dir=folder) as tmp:
        hf_dir = Path(tmp)
        info = train_encoder([ex.input for ex in train], [index[ex.output] for ex in train], len(labels), hf_dir,
                             step)
        step("exporting the fine-tuned encoder to int8 ONNX")
        export = export_encoder(hf_dir, folder)
    export["finetune"] = info
    (folder / "encoder.json").write_text(json.dumps(export, indent=2), "utf-8")
    return folder
