"""Generative student: LoRA supervised fine-tuning (transformers + peft) on the dataset's chat JSONL.

Loss is on the assistant turn only. The model folder gets `adapter/` (peft LoRA adapter, for vLLM
`--enable-lora` or llama.cpp `convert_lora_to_gguf.py`) and `merged/` (base + adapter merged, plain HF
safetensors + tokenizer: `vllm serve merged/` or llama.cpp `convert_hf_to_gguf.py merged/`). See
docs/lora.md for the GPU recipe. On CPU this runs end to end on tiny models (tests); real runs need a GPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any, cast

from insource.capture.dataset_read import Dataset
from insource.errors import NotReady
from insource.registry.progress import Step

LORA_R = 8
LORA_ALPHA = 16
LR = 2e-4
BATCH = 4
MAX_LEN = 512
SEED = 17
DEFAULT_EPOCHS = 2


def read_chat(path: Path) -> list[list[dict[str, str]]]:
    if not path.is_file():
        raise NotReady(f"corrupt dataset: {path.name} (chat JSONL for the LoRA student) is missing")
    out = []
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise NotReady(f'corrupt dataset: {path.name} line {lineno} needs {{"messages": [...]}}') from None
        if not messages or messages[-1].get("role") != "assistant":
            raise NotReady(f"corrupt dataset: {path.name} line {lineno} must end with the assistant's answer")
        out.append(messages)
    return out


def _render(tok: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt, answer) text: the tokenizer's chat template when it has one, else a plain fallback."""
    prompt_msgs, answer = messages[:-1], str(messages[-1].get("content") or "")
    if getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        return str(prompt), answer + (tok.eos_token or "")
    prompt = "".join(f"<|{m.get('role')}|>\n{m.get('content') or ''}\n" for m in prompt_msgs) + "<|assistant|>\n"
    return prompt, answer + (tok.eos_token or "")


def encode_examples(tok: Any, chats: list[list[dict[str, str]]]) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 on the prompt: the loss is on the teacher's answer only)."""
    out = []
    for messages in chats:
        prompt, answer = _render(tok, messages)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        ids = (p_ids + a_ids)[-MAX_LEN:]
        labels = ([-100] * len(p_ids) + a_ids)[-MAX_LEN:]
        out.append((ids, labels))
    return out


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _mean_loss(model: Any, data: list[tuple[list[int], list[int]]], pad_id: int) -> float | None:
    import torch

    if not data:
        return None
    losses = []
    with torch.no_grad():
        for i in range(0, len(data), BATCH):
            losses.append(float(model(**_collate(data[i : i + BATCH], pad_id, model.device)).loss.item()))
    return sum(losses) / len(losses)


def _load_base(base: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from insource.distill.export import quiet_transformers

    quiet_transformers()
    if not (base / "config.json").is_file():
        raise NotReady(f"--base-model {base} is not a Hugging Face model folder (config.json missing)")
    try:
        tok = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError) as exc:  # no or unreadable tokenizer files, a damaged config.json
        raise NotReady(f"--base-model {base}: its tokenizer cannot be loaded ({_one_line(exc)})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    import torch

    gpu = torch.cuda.is_available()  # the real (GPU) run: bf16 on the first visible GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), **({"dtype": torch.bfloat16} if gpu else {}))
    except (OSError, ValueError) as exc:  # no weights, a damaged file, a config no causal LM class reads
        raise NotReady(f"--base-model {base}: its causal LM weights cannot be loaded ({_one_line(exc)})") from None
    return (cast(Any, model).to("cuda") if gpu else model), tok


def _one_line(exc: BaseException) -> str:
    """A library's (often multi-line) error message on one line, at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def _lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg)


def _train(model: Any, data: list[tuple[list[int], list[int]]], pad_id: int, epochs: int, step: Step) -> int:
    import torch

    rng = random.Random(SEED)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    steps = 0
    total = epochs * math.ceil(len(data) / BATCH)
    for _epoch in range(epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in range(0, len(order), BATCH):
            loss = model(**_collate([data[j] for j in order[i : i + BATCH]], pad_id, model.device)).loss
            optim.zero_grad()
            loss.backward()
            optim.step()
            steps += 1
            if steps % 10 == 1:
                step(f"LoRA training, loss {float(loss.item()):.3f}", done=steps, total=total)
    model.eval()
    return steps


def train_lora(
    ds: Dataset, folder: Path, *, base_model: Path | None, epochs: int = DEFAULT_EPOCHS, step: Step
) -> dict[str, Any]:
    """LoRA SFT of `base_model` on the dataset; writes adapter/ and merged/ into `folder`."""
    if base_model is None:
        raise NotReady("the lora student needs --base-model DIR (a Hugging Face causal LM folder)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers/peft deprecation notices, not our errors
        # an absolute path in model.json and the card: the provenance must not depend on the cwd of distill
        return _train_lora(ds, folder, Path(os.path.abspath(base_model.expanduser())), epochs, step)


def _train_lora(ds: Dataset, folder: Path, base_model: Path, epochs: int, step: Step) -> dict[str, Any]:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = _load_base(base_model)
    train = encode_examples(tok, read_chat(ds.path / "train.jsonl"))
    val = encode_examples(tok, read_chat(ds.path / "val.jsonl")) if (ds.path / "val.jsonl").is_file() else []
    model = _lora(model)
    before = _mean_loss(model, val or train[:32], tok.pad_token_id)
    steps = _train(model, train, tok.pad_token_id, epochs, step)
    after = _mean_loss(model, val or train[:32], tok.pad_token_id)
    step("saving the adapter and the merged model")
    model.save_pretrained(str(folder / "adapter"))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(folder / "merged"), safe_serialization=True)
    tok.save_pretrained(str(folder / "merged"))
    tok.save_pretrained(str(folder / "adapter"))
    return {
        "labels": [],
        "metrics": {
            "loss_before": round(before or 0.0, 5),
            "loss_after": round(after or 0.0, 5),
            "steps": steps,
            "train_examples": len(train),
            "loss_split": "val" if val else "train",
        },
        "runtime": {"serving": "vLLM or llama.cpp (docs/lora.md)", "adapter": "adapter/", "merged": "merged/"},
        "base_model": str(base_model),
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": "all-linear", "lr": LR, "epochs": epochs},
    }
