"""Benchmark: a learned router between GPT-4 (strong) and Mixtral-8x7B (weak) on real GSM8K answers.

    python bench/routellm_router.py [--folds 5] [--json]

Replays ../shared/data/routellm/gsm8k_responses.csv (1,319 questions, both models' real answers and whether
each is right). Reports the share of traffic kept off GPT-4 while the routed system keeps ≥ 95% of GPT-4's
accuracy (RouteLLM reports ~35%; target ≥ 40%), for two routers, both cross-validated (the routing
threshold is chosen inside each training fold, by inner cross-validation, and applied to the held-out fold):

- `question`: before any call, from the question alone (MiniLM embedding → logistic regression predicting
  whether the weak model will be right);
- `cascade`: the weak model answers first; its answer is checked (the GSM8K-style `<<a*b=c>>` calculator
  annotations are re-computed with a safe arithmetic evaluator, the final answer is compared with the last
  computed value, hedging words are counted) and, with the question and answer embeddings, a logistic
  regression predicts whether to keep the weak answer or escalate to GPT-4 (cost: every request pays the
  cheap weak call).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import operator
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routellm" / "gsm8k_responses.csv"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
QUALITY = 0.95
_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_NUM = re.compile(r"-?\d[\d,]*\.?\d*")
_HEDGES = ("however", "assum", "approximately", "round", "can't have", "cannot have", "not possible", "but since")


def safe_arith(expr: str) -> float | None:
    """Evaluate + - * / ** % // on numbers only (no names, calls or attributes); None when not arithmetic."""
    try:
        tree = ast.parse(expr.replace(",", "").replace("^", "**").strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 12:
                raise ValueError("exponent too large")
            return float(_OPS[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](ev(node.operand)))
        raise ValueError("not arithmetic")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _number(text: str) -> float | None:
    found = _NUM.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def answer_features(response: str) -> list[float]:
    """Checks on the weak model's answer: arithmetic errors, final answer vs last computed value, hedging."""
    calcs = _CALC.findall(response)
    wrong = 0
    last_value: float | None = None
    for expr, claimed in calcs:
        value, stated = safe_arith(expr), _number(claimed)
        if value is not None and stated is not None and abs(value - stated) > 1e-6 * max(1.0, abs(value)):
            wrong += 1
        last_value = stated if stated is not None else last_value
    final_text = response.split("####")[-1] if "####" in response else response[-80:]
    final = _number(final_text)
    lower = response.lower()
    return [
        float(len(calcs)),
        float(wrong),
        float(wrong > 0),
        float("####" in response),
        float(final is not None and last_value is not None and abs(final - last_value) < 1e-6),
        float(final is not None and final != int(final)),
        float(sum(lower.count(h) for h in _HEDGES)),
        float(np.log1p(len(response))),
        float(response.count("\n")),
    ]


def load_rows() -> list[dict[str, str]]:
    with DATA.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def embed(texts: list[str], cache_root: Path) -> np.ndarray:
    import os

    from insource.distill.export import cached_base_encoder
    from insource.registry.embed_cache import EmbeddingCache
    from insource.registry.encoder import OnnxEncoder

    folder = cached_base_encoder(cache_root)
    encoder = OnnxEncoder(folder, workers=os.cpu_count() or 1)
    return EmbeddingCache(cache_root / "embeddings" / folder.name).embed(texts, encoder.encode, encoder.dim)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    model.fit(x_train, y_train)
    return np.asarray(model.predict_proba(x_test)[:, 1])


def _oof(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        out[te] = _fit_predict(x[tr], y[tr], x[te])
    return out


def routed_accuracy(p_weak_ok: np.ndarray, threshold: float, weak: np.ndarray, strong: np.ndarray) -> float:
    to_weak = p_weak_ok >= threshold
    return float(np.where(to_weak, weak, strong).mean())


def choose_threshold(p: np.ndarray, weak: np.ndarray, strong: np.ndarray, floor: float) -> float:
    """Lowest threshold (most traffic to the weak model) whose routed accuracy stays ≥ floor."""
    best = float("inf")
    for t in sorted(set(p.tolist()), reverse=True):
        if routed_accuracy(p, t, weak, strong) >= floor:
            best = t
    return best


def evaluate_router(x: np.ndarray, weak: np.ndarray, strong: np.ndarray, folds: int) -> dict[str, float]:
    """Nested CV: the threshold is chosen on inner out-of-fold predictions of the training part only."""
    from sklearn.model_selection import StratifiedKFold

    floor = QUALITY * strong.mean()
    off = np.zeros(len(weak), dtype=bool)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, weak):
        inner = _oof(x[tr], weak[tr], folds, seed=1)
        t = choose_threshold(inner, weak[tr], strong[tr], QUALITY * strong[tr].mean())
        off[te] = _fit_predict(x[tr], weak[tr], x[te]) >= t
    accuracy = float(np.where(off, weak, strong).mean())
    oof = _oof(x, weak, folds, seed=2)
    curve_best = max(
        (float((oof >= t).mean()) for t in set(oof.tolist()) if routed_accuracy(oof, t, weak, strong) >= floor),
        default=0.0,
    )
    return {
        "share_off_strong": float(off.mean()),
        "accuracy": accuracy,
        "quality_vs_strong": accuracy / strong.mean(),
        "meets_quality": accuracy >= floor,
        "best_share_on_curve": curve_best,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache folder (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not DATA.is_file():
        print(f"RouteLLM data not found at {DATA}", file=sys.stderr)
        return 2
    rows = load_rows()
    weak = np.array([r[WEAK] == "True" for r in rows])
    strong = np.array([r[STRONG] == "True" for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        q = embed([r["prompt"] for r in rows], cache)
        a = embed([r[f"{WEAK}_response"][:2000] for r in rows], cache)
    feats = np.array([answer_features(r[f"{WEAK}_response"]) for r in rows])
    results = {
        "n": len(rows),
        "strong_accuracy": float(strong.mean()),
        "weak_accuracy": float(weak.mean()),
        "random_share_at_quality": float((strong.mean() - QUALITY * strong.mean()) / (strong.mean() - weak.mean())),
        "question": evaluate_router(q, weak, strong, args.folds),
        "cascade": evaluate_router(np.hstack([q, a, feats]), weak, strong, args.folds),
        "cascade_checks_only": evaluate_router(feats, weak, strong, args.folds),
    }
    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"GSM8K n={results['n']}: GPT-4 {results['strong_accuracy']:.3f}, Mixtral {results['weak_accuracy']:.3f}; "
        f"floor = 95% of GPT-4 = {QUALITY * results['strong_accuracy']:.3f}; random routing keeps "
        f"{results['random_share_at_quality']:.1%} off GPT-4"
    )
    for name in ("question", "cascade_checks_only", "cascade"):
        r = results[name]
        print(
            f"{name:>20}: {r['share_off_strong']:.1%} of traffic kept off GPT-4 (nested CV), accuracy "
            f"{r['accuracy']:.3f} = {r['quality_vs_strong']:.1%} of GPT-4 "
            f"({'meets' if r['meets_quality'] else 'MISSES'} 95%); best point on the CV curve "
            f"{r['best_share_on_curve']:.1%}  (RouteLLM ~35%, target ≥ 40%)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
