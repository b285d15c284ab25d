"""Which log-prob statistic should decide when a generative student answers? Measured on SNIPS held-out answers.

Takes a finished `snips_extraction.py` work folder (its LoRA student and dataset), generates the student's answer
to every validation and test example once (llama.cpp, as served), and scores each rule by how well it separates
answers that agree with the teacher (JSON-exact) from the others:

- `min`: the minimum token log-prob (what eval and serving use);
- `mean`: the mean token log-prob; `p10`: its 10th percentile; `sum`: the sequence log-prob;
- `learned`: a logistic regression over (min, mean, p10, sum, answer tokens), out-of-fold (5 folds);
- `min+copy`: `min`, with answers holding a value of a copied field that is not in the prompt deferred (the
  product's rule since `routing/copied.py`; `min` alone shows what it adds). The copied fields are the model's
  (model.json), or learned from the dataset's train split for a model distilled before they were recorded;
- `min+copy+shape`: `min+copy`, with answers using a key or label the teacher's answers never use (for their
  label) deferred too (the product's rule since `routing/shape.py`; learned from the train split when the model
  predates it).

Answers that stopped on length or do not parse are deferred by every rule (scored −inf). Reports AUROC and the
share answered at ≥ 95% agreement with the best cut on the pooled answers (an optimistic, oracle cut: for
comparing rules, not a routing figure).

    python bench/snips_defer.py --workdir DIR
    python bench/snips_defer.py --model models/T@vN --dataset DIR --out NAME.md   # any JSON-task LoRA student
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RULES = ("min", "mean", "p10", "sum", "learned", "min+copy", "min+copy+shape")


def generate(folder: Path, ds: Path) -> list[dict[str, Any]]:
    from insource.capture.chat import prune_system, read_chat
    from insource.evals.generative import LlamaCppGenerator, max_tokens
    from insource.routing.agreement import agree, parses
    from insource.routing.copied import holds_copies, learn, prompt_text
    from insource.routing.shape import fits
    from insource.routing.shape import learn as learn_shape

    info = json.loads((folder / "model.json").read_text())
    train = read_chat(ds / "train.jsonl")
    copied = info.get("copied_fields")
    if "copied_fields" not in info:
        copied = learn([(prompt_text(c[:-1]), str(c[-1].get("content") or "")) for c in train])
    shape = info["answer_shape"] if "answer_shape" in info else learn_shape([str(c[-1].get("content")) for c in train])
    gen = LlamaCppGenerator(Path(info["runtime"]["base_gguf"]), folder / "adapter.gguf")
    limit, system = max_tokens(info), info.get("system_prompt")
    rows = []
    for split in ("val", "test"):
        for chat in read_chat(ds / f"{split}.jsonl"):
            reply: Any = gen.llm.create_chat_completion(
                messages=prune_system(chat[:-1], system),  # type: ignore[arg-type]
                max_tokens=limit,
                temperature=0.0,
                logprobs=True,
                top_logprobs=1,
            )
            choice = reply["choices"][0]
            text = str(choice["message"].get("content") or "")
            lps = [float(t["logprob"]) for t in (choice.get("logprobs") or {}).get("content") or []] or [0.0]
            rows.append(
                {
                    "split": split,
                    "lps": lps,
                    "usable": choice.get("finish_reason") == "stop" and parses(text),
                    "correct": agree("json", text, str(chat[-1].get("content") or "")),
                    "copies": holds_copies(text, prompt_text(chat[:-1]), copied),
                    "fits": fits(text, shape),
                }
            )
    return rows


def features(lps: list[float]) -> list[float]:
    arr = np.array(lps)
    return [float(arr.min()), float(arr.mean()), float(np.percentile(arr, 10)), float(arr.sum()), math.log(len(arr))]


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def coverage_at(score: np.ndarray, y: np.ndarray, target: float) -> float:
    """Largest share answered (highest scores first) whose agreement is ≥ target."""
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(y[order])
    ok = [i + 1 for i in range(len(y)) if np.isfinite(score[order[i]]) and hits[i] / (i + 1) >= target]
    return max(ok, default=0) / len(y)


def scores(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.array([features(r["lps"]) for r in rows])
    y = np.array([r["correct"] for r in rows], dtype=int)
    usable = np.array([r["usable"] for r in rows])
    out = {name: np.where(usable, x[:, i], -np.inf) for i, name in enumerate(RULES[:4])}
    learned = np.full(len(rows), -np.inf)
    folds = min(5, int(y.sum()), int(len(y) - y.sum()))
    if folds >= 2:
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
            model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
            learned[test] = model.decision_function(x[test])
    out["learned"] = np.where(usable, learned, -np.inf)
    copies = np.array([r.get("copies", True) for r in rows])
    out["min+copy"] = np.where(copies, out["min"], -np.inf)
    fitting = np.array([r.get("fits", True) for r in rows])
    out["min+copy+shape"] = np.where(fitting, out["min+copy"], -np.inf)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, help="a snips_extraction.py work folder")
    ap.add_argument("--model", type=Path, help="instead of --workdir: any LoRA student's folder ...")
    ap.add_argument("--dataset", type=Path, help="... and its dataset")
    ap.add_argument("--out", default="snips_defer.md", help="file name in bench/results")
    ap.add_argument("--target", type=float, default=0.95)
    args = ap.parse_args()
    if args.workdir is not None:
        state = json.loads((args.workdir / "state.json").read_text())
        folder, ds = Path(state["model"]["distill"]["path"]), args.workdir / "ds"
    else:
        folder, ds = args.model, args.dataset
    t0 = time.perf_counter()
    rows = generate(folder, ds)
    y = np.array([r["correct"] for r in rows], dtype=int)
    finite = {k: np.where(np.isfinite(v), v, -1e9) for k, v in scores(rows).items()}
    lines = [
        f"Deferral rules ({ds.name}, {time.strftime('%Y-%m-%d')}, {folder.name}, {len(rows)} val+test answers, "
        f"{y.mean():.1%} JSON-exact, {sum(r['usable'] for r in rows)} usable; {time.perf_counter() - t0:.0f} s)",
        "",
        f"| rule | AUROC (right vs wrong) | answered at ≥ {args.target:.0%} agreement (oracle cut) |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {auroc(v, y):.3f} | {coverage_at(v, y, args.target):.1%} |" for k, v in finite.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "results" / args.out).write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
