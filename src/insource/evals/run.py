"""`insource eval`: prove a classifier student against its teacher on a dataset split.

The threshold reaching the target agreement is chosen on the validation split (with a Wilson lower-bound
margin) and reported on the evaluated split. Results are saved into the model folder (`eval.json`) so the
router can read the thresholds.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from insource.capture.dataset_read import Dataset, Example, load_dataset
from insource.config import Config
from insource.errors import NotReady
from insource.evals import metrics as M
from insource.registry.entries import (
    CLASSIFIER_KINDS,
    EVAL_FILE,
    load_student,
    read_json,
    read_model_info,
    resolve,
    write_json_atomic,
)
from insource.routing.agreement import METRICS, choose_metric

if TYPE_CHECKING:
    from insource.evals.generative import GenScored, Grader
    from insource.evals.judge import JudgeSpend

LATENCY_SAMPLES = 200
log = logging.getLogger(__name__)


@dataclass
class Scored:
    answers: list[str]
    conf: np.ndarray
    ood: np.ndarray
    correct: np.ndarray


def score_splits(folder: Path, cache_root: Path, *splits: list[Example]) -> list[Scored]:
    """Run the registered student over each list of examples (loaded once; embeddings through the content-hash
    cache, looked up in one pass)."""
    from insource.registry.embedding import embed_examples, encoder_cache
    from insource.registry.entries import load_parts, model_labels

    labels = model_labels(folder, read_model_info(folder))
    encoder, head, lexical = load_parts(folder, labels, os.cpu_count() or 1)
    examples = [ex for split in splits for ex in split]
    emb = embed_examples(encoder, encoder_cache(cache_root, folder), examples)
    probs = lexical.proba([ex.input for ex in examples]) if lexical is not None else None
    idx, conf, ood = head.predict(emb, probs)
    answers = [labels[int(i)] for i in idx]
    correct = np.array([a == ex.output for a, ex in zip(answers, examples, strict=True)], dtype=bool)
    out, start = [], 0
    for split in splits:
        end = start + len(split)
        out.append(Scored(answers[start:end], conf[start:end], ood[start:end], correct[start:end]))
        start = end
    return out


def load_gold(path: Path) -> dict[str, str]:
    """Gold labels by example id: JSONL `{"id", "label"}`, a JSON object `{id: label}`, or CSV `id,label`."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotReady(f"cannot read the labels file {path}: {exc}") from None
    try:
        if path.suffix == ".csv":
            return {row["id"]: row["label"].strip() for row in csv.DictReader(text.splitlines())}
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise NotReady(f"labels file {path}: expected an object {{id: label}}")
            return {str(k): str(v).strip() for k, v in data.items()}
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {str(r["id"]): str(r["label"]).strip() for r in rows}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise NotReady(f"labels file {path}: expected id/label records ({exc})") from None


def measure_latency(root: Path, name: str, texts: list[str]) -> dict[str, float]:
    """p50/p95 latency of single-input predict through the serving API (one thread)."""
    student = load_student(root, name, workers=1)
    sample = (texts * (1 + LATENCY_SAMPLES // max(1, len(texts))))[:LATENCY_SAMPLES]
    for text in sample[:10]:
        student.predict([text])
    times = []
    for text in sample:
        t0 = time.perf_counter()
        student.predict([text])
        times.append((time.perf_counter() - t0) * 1000)
    arr = np.array(times)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "mean": float(arr.mean())}


def _gold_block(gold: dict[str, str], examples: list[Example], scored: Scored) -> dict[str, Any]:
    pairs = [(ans, ex, gold[ex.id]) for ans, ex in zip(scored.answers, examples, strict=True) if ex.id in gold]
    if not pairs:
        raise NotReady("the labels file has no id in common with the evaluated split")
    return {
        "gold_n": len(pairs),
        "gold_agreement": round(sum(a == g for a, _, g in pairs) / len(pairs), 5),
        "teacher_gold_agreement": round(sum(ex.output == g for _, ex, g in pairs) / len(pairs), 5),
    }


def _threshold_block(val: Scored | GenScored, test: Scored | GenScored, target: float) -> dict[str, Any]:
    threshold = M.choose_threshold(val.conf, val.correct, target)
    coverage, agreement, answered = M.at_threshold(test.conf, test.correct, threshold)
    val_cov, val_agr, _ = M.at_threshold(val.conf, val.correct, threshold)
    n = len(test.correct)
    deferred_ok = n - answered  # deferred inputs get the teacher's own answer
    hits = int(test.correct[test.conf >= threshold].sum()) if threshold is not None else 0
    return {
        "target_agreement": target,
        "threshold": None if threshold is None else round(threshold, 6),
        "coverage_at_threshold": round(coverage, 5),
        "agreement_at_threshold": None if agreement is None else round(agreement, 5),
        "meets_target": agreement is not None and agreement >= target,
        "val_coverage_at_threshold": round(val_cov, 5),
        "val_agreement_at_threshold": None if val_agr is None else round(val_agr, 5),
        "val_n": len(val.correct),
        "end_to_end_agreement": round((hits + deferred_ok) / n, 5) if n else None,
    }


def _costs(cfg: Config, latency: dict[str, float], examples: list[Example]) -> dict[str, float]:
    per_request_s = latency["mean"] / 1000.0
    teacher = float(np.mean([ex.teacher_cost_usd for ex in examples])) if examples else 0.0
    return {
        "cost_per_1k_usd": round(per_request_s * cfg.inhouse.cpu_usd_per_hour / 3600.0 * 1000, 8),
        "teacher_cost_per_1k_usd": round(teacher * 1000, 6),
    }


def evaluate(
    cfg: Config,
    task: str,
    model: str,
    *,
    split: str = "test",
    dataset: Path | None = None,
    target: float = 0.99,
    labels_file: Path | None = None,
    save: bool = True,
    metric: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `split`; returns the result object (see the `insource eval --json` contract)."""
    if not 0.0 < target <= 1.0:
        raise NotReady(f"--target-agreement must be in (0, 1], got {target}")
    root = cfg.registry_path()
    folder = resolve(root, model)
    info = read_model_info(folder)
    if info["task"] != task:
        raise NotReady(f"model {info['name']} was trained for task {info['task']!r}, not {task!r}")
    if metric is not None and metric not in METRICS:
        raise NotReady(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")
    ds = _dataset_for(info, dataset)
    if info["student"] not in CLASSIFIER_KINDS:
        generated = evaluate_generative(cfg, folder, info, split, ds, target, metric)
        if save:
            _save(folder, generated)
        return generated
    if metric is not None:
        raise NotReady(f"--metric is for generative students: {info['name']} is a classifier (exact labels)")
    examples, val_examples = ds.split(split), ds.split("val")
    if not examples:
        raise NotReady(f"the {split} split of {ds.path} is empty")
    cache = root / ".cache"
    scored, val = score_splits(folder, cache, examples, val_examples)
    latency = measure_latency(root, str(info["name"]), [ex.input for ex in examples])
    result: dict[str, Any] = {
        "model": info["name"],
        "task": task,
        "student": info["student"],
        "split": split,
        "n": len(examples),
        "dataset": str(ds.path),
        **_agreement_block(scored, val, target),
        "latency_ms_p50": round(latency["p50"], 4),
        "latency_ms_p95": round(latency["p95"], 4),
        "answers_per_s_per_core": round(1000.0 / latency["mean"], 1),
        **_costs(cfg, latency, examples),
    }
    if labels_file is not None:
        result.update(_gold_block(load_gold(labels_file), examples, scored))
    if save:
        _save(folder, result)
    return result


def _agreement_block(scored: Any, val: Any, target: float) -> dict[str, Any]:
    """Agreement, calibration and the threshold found on validation: the same keys for every kind of student."""
    return {
        "agreement": round(float(scored.correct.mean()), 5),
        "ece": round(M.expected_calibration_error(scored.conf, scored.correct), 5),
        "ood_rate": round(float(scored.ood.mean()), 5),
        **_threshold_block(val, scored, target),
        "curve": M.coverage_curve(scored.conf, scored.correct),
        "reliability": M.reliability(scored.conf, scored.correct),
    }


def evaluate_generative(
    cfg: Config, folder: Path, info: dict[str, Any], split: str, ds: Dataset, target: float, metric: str | None
) -> dict[str, Any]:
    """The generative student's result: the classifier's keys plus `metric` (and `field_accuracy` for json)."""
    from insource.capture.chat import read_chat
    from insource.evals.generative import field_accuracy, generator_for, score

    chats, val_chats = read_chat(ds.path / f"{split}.jsonl"), read_chat(ds.path / "val.jsonl")
    if not chats:
        raise NotReady(f"the {split} split of {ds.path} is empty")
    metric = metric or choose_metric([str(c[-1].get("content") or "") for c in read_chat(ds.path / "train.jsonl")])
    grade, spend = _judge_grader(cfg, info, metric)  # first: a teacher that cannot judge stops eval at once
    gen = generator_for(folder, info)
    scored, val = score(gen, chats, info, metric, grade), score(gen, val_chats, info, metric, grade)
    examples = ds.split(split)
    cpu = float(np.mean(scored.cpu_s))
    result: dict[str, Any] = {
        "model": info["name"],
        "task": info["task"],
        "student": info["student"],
        "metric": metric,
        "split": split,
        "n": len(chats),
        "dataset": str(ds.path),
        **_agreement_block(scored, val, target),
        "latency_ms_p50": round(float(np.percentile(scored.wall_s, 50)) * 1000, 2),
        "latency_ms_p95": round(float(np.percentile(scored.wall_s, 95)) * 1000, 2),
        "cpu_s_per_answer": round(cpu, 4),
        "answers_per_s_per_core": round(1.0 / cpu, 3) if cpu > 0 else None,
        **_costs(cfg, {"mean": cpu * 1000.0}, examples),
    }
    if spend is not None:  # the judge's requests, metered as audits
        result["judge_requests"] = spend.requests
        result["judge_cost_usd"] = round(spend.cost_usd, 8)
    if metric == "json":
        result["field_accuracy"] = field_accuracy(scored.answers, [str(c[-1].get("content") or "") for c in chats])
    return result


def _judge_grader(cfg: Config, info: dict[str, Any], metric: str) -> tuple[Grader | None, JudgeSpend | None]:
    """For the `judge` metric: the grader asking the task's teacher, and the spend it adds up (else None)."""
    if metric != "judge":
        return None, None
    from insource.evals.judge import judge_answers, probe_teacher, teacher_alias

    task = str(info["task"])
    alias = teacher_alias(cfg, task)  # before any answer is generated: no teacher, or an unreachable one, stops here
    total = probe_teacher(cfg, task, alias)

    def grade(chats: list[list[dict[str, str]]], answers: list[str]) -> list[bool]:
        verdicts, spend = judge_answers(cfg, task, alias, chats, answers)
        total.requests += spend.requests
        total.cost_usd += spend.cost_usd
        return verdicts

    return grade, total


def _dataset_for(info: dict[str, Any], dataset: Path | None) -> Dataset:
    if dataset is None:
        recorded = (info.get("dataset") or {}).get("path")
        if not recorded:
            raise NotReady(f"{info['name']} records no dataset: pass --dataset DIR")
        dataset = Path(recorded)
        if not (dataset / "dataset.json").is_file():
            raise NotReady(
                f"{info['name']} was trained on the dataset {dataset}, which is no longer there: "
                f"pass --dataset DIR (a dataset of task {info['task']!r})"
            )
    ds = load_dataset(dataset)
    if ds.task and ds.task != info["task"]:
        raise NotReady(
            f"dataset {ds.path} is for task {ds.task!r}, but {info['name']} was trained for {info['task']!r}: "
            f"pass a dataset of task {info['task']!r}"
        )
    return ds


def _previous_eval(path: Path) -> dict[str, Any]:
    """The eval.json being updated; a damaged one is replaced (its earlier runs are lost), with a warning."""
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except NotReady as exc:
        log.warning("%s: replacing it with this run's results", exc.message)
        return {}


def _save(folder: Path, result: dict[str, Any]) -> None:
    path = folder / EVAL_FILE
    previous = _previous_eval(path)
    thresholds = previous.get("thresholds")
    thresholds = dict(thresholds) if isinstance(thresholds, dict) else {}
    if result["threshold"] is not None:
        thresholds[f"{result['target_agreement']:g}"] = result["threshold"]
    else:
        thresholds.pop(f"{result['target_agreement']:g}", None)
    runs = previous.get("runs")
    runs = dict(runs) if isinstance(runs, dict) else {}
    runs[f"{result['split']}@{result['target_agreement']:g}"] = {k: v for k, v in result.items() if k != "curve"}
    write_json_atomic(path, {"thresholds": thresholds, "latest": result, "runs": runs})
