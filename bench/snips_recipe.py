"""Cheap LoRA recipe probes on SNIPS extraction: train on the first N SNIPS training queries (the product's own
encoding, LoRA and training loop, with the recipe's constants overridden), then greedy-decode held-out SNIPS
validation queries with transformers and score JSON-exact, intent and slots; the wrong answers are classified
(missing slot, extra slot, wrong span, wrong intent, does not parse) and written with the run's figures.

    python bench/snips_recipe.py --examples 600 --epochs 1 --lr 1e-3 --r 8 --val 100 --out /work/snips_run/probe_a

Not the benchmark (`snips_extraction.py` is): no gateway, no llama.cpp, fp32 greedy decoding; for A/B of
recipes in the same conditions only. One torch thread unless `--threads`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from bench.snips_extraction import load  # noqa: E402


def _chats(rows: list[tuple[str, str]]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in rows]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train(rows: list[tuple[str, str]], args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    from insource.distill import lora
    from insource.registry.lora_base import load_base, resolve_base

    lora.LR, lora.LORA_R, lora.LORA_ALPHA = args.lr, args.r, 2 * args.r
    torch.manual_seed(lora.SEED)
    torch.set_num_threads(args.threads)
    model, tok = load_base(resolve_base(None))
    data = lora.encode_examples(tok, _chats(rows))
    model = lora._lora(model)
    t0, c0 = time.perf_counter(), _cpu()
    out = lora._train(model, data, tok.pad_token_id, args.epochs, lambda *a, **k: None)
    out.update(train_wall_s=round(time.perf_counter() - t0, 1), train_cpu_s=round(_cpu() - c0, 1))
    out["train_tokens"] = sum(len(ids) for ids, _ in data) * args.epochs
    return model, tok, out


def decode(model: Any, tok: Any, queries: list[str], batch: int = 16) -> list[tuple[str, float]]:
    """Greedy answers (fp32) with the minimum token probability of each."""
    import torch

    tok.padding_side = "left"
    out: list[tuple[str, float]] = []
    for i in range(0, len(queries), batch):
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in queries[i : i + batch]
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=96, do_sample=False, output_scores=True, return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        new = gen.sequences[:, enc["input_ids"].shape[1] :]
        probs = torch.stack([s.float().softmax(-1) for s in gen.scores], 1)  # batch x steps x vocab
        chosen = probs.gather(2, new[:, : probs.shape[1], None])[..., 0]
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            n = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
            text = tok.decode(ids[:n], skip_special_tokens=True)
            out.append((text, float(chosen[row, :n].min())))
    return out


def kind(answer: str, gold: str) -> str:
    """What is wrong with an answer (\"right\" when it is JSON-exact)."""
    try:
        a = json.loads(answer)
    except ValueError:
        return "no parse"
    g = json.loads(gold)
    if a == g:
        return "right"
    if not isinstance(a, dict) or not isinstance(a.get("slots"), dict):
        return "bad shape"
    if a.get("intent") != g["intent"]:
        return "wrong intent"
    sa, sg = a["slots"], g["slots"]
    if set(sa) - set(sg) and not set(sg) - set(sa):
        return "extra slot"
    if set(sg) - set(sa) and not set(sa) - set(sg):
        return "missing slot"
    if set(sa) != set(sg):
        return "wrong slot names"
    return "wrong value"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--val", type=int, default=100, help="held-out SNIPS validation queries decoded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="folder for answers.jsonl and summary.json")
    args = ap.parse_args()
    train_rows, val_rows = load("train"), load("validate")
    random.Random(0).shuffle(train_rows)
    random.Random(0).shuffle(val_rows)
    val_rows = val_rows[-args.val :]  # the cascade replays the first validation queries: probe on the last
    model, tok, summary = train(train_rows[: args.examples], args)
    t0 = time.perf_counter()
    answers = decode(model, tok, [q for q, _ in val_rows])
    kinds = [kind(a, g) for (a, _), (_, g) in zip(answers, val_rows, strict=True)]
    intent = [_intent(a) == json.loads(g)["intent"] for (a, _), (_, g) in zip(answers, val_rows, strict=True)]
    summary.update(
        vars(args) | {"out": str(args.out)},
        json_exact=kinds.count("right") / len(kinds),
        intent=sum(intent) / len(intent),
        kinds={k: kinds.count(k) for k in sorted(set(kinds))},
        decode_wall_s=round(time.perf_counter() - t0, 1),
        load=os.getloadavg(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "answers.jsonl").open("w") as fh:
        for (q, g), (a, p), k in zip(val_rows, answers, kinds, strict=True):
            fh.write(json.dumps({"query": q, "gold": g, "answer": a, "min_p": p, "kind": k}) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


def _intent(answer: str) -> Any:
    try:
        return json.loads(answer).get("intent")
    except (ValueError, AttributeError):
        return None


if __name__ == "__main__":
    main()
