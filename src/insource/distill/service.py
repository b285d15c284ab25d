"""`insource distill`: find the dataset, refuse what must not train, train a student, register it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from insource.capture.dataset_read import Dataset, check_trainable, load_dataset
from insource.config import Config
from insource.distill.card import render_card
from insource.distill.select import AUTO_STUDENTS, check_target, pick, record_choice, val_at_target
from insource.distill.validation import COMMON_TARGET, val_requirement, val_warnings
from insource.errors import NotReady
from insource.registry.entries import check_task_name, commit, discard, register, stage
from insource.registry.progress import Step, quiet
from insource.store import audit_queries

STUDENTS = ("classifier", "classifier-strong", "lora")
MAX_EPOCHS = 50


def cache_root(cfg: Config) -> Path:
    return cfg.registry_path() / ".cache"


def find_dataset(store: Any, task: str) -> Path:
    """The newest training dataset of `task` recorded in the audit table (by `insource dataset build`)."""
    rows = audit_queries.dataset_builds(store, task)
    for row in rows:
        target = row.get("target")
        if row.get("purpose") in (None, "train") and target and (Path(target) / "dataset.json").is_file():
            return Path(target)
        detail = _detail(row.get("detail"))
        out = detail.get("out")
        if row.get("purpose") in (None, "train") and isinstance(out, str) and (Path(out) / "dataset.json").is_file():
            return Path(out)
    raise NotReady(
        f"no training dataset recorded for task {task!r}: build one with "
        f"`insource dataset build --task {task} --out DIR`, or pass --dataset DIR"
    )


def _detail(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _dataset_info(ds: Dataset) -> dict[str, Any]:
    man = ds.manifest
    return {
        "path": str(ds.path),
        "hashes": ds.hashes,
        "counts": {name: len(ds.splits[name]) for name in ds.splits},
        "providers": man.get("providers", {}),
        "terms": man.get("terms", {}),
        "purpose": man.get("purpose", "train"),
    }


def _build_classifier(ds: Dataset, folder: Path, cfg: Config, *, strong: bool, step: Step) -> dict[str, Any]:
    from insource.distill.classifier import install_encoder, train_head_on
    from insource.distill.export import cached_base_encoder

    step("preparing the int8 ONNX encoder")
    if strong:
        from insource.distill.finetune import finetuned_encoder

        encoder_dir = finetuned_encoder(ds, folder, cache_root(cfg), step=step)
    else:
        encoder_dir = cached_base_encoder(cache_root(cfg), step)
        install_encoder(encoder_dir, folder)
    info = train_head_on(ds, folder, encoder_dir, cache_root(cfg), knn=True, lexical=True, step=step)
    encoder_json = json.loads((folder / "encoder.json").read_text("utf-8"))
    info["runtime"] = {**encoder_json, "serving": "onnxruntime+tokenizers+numpy"}
    return info


@dataclass(frozen=True)
class LoraOptions:
    """`--student lora` only: the base model folder (None: the default CPU base) and epochs (None: default)."""

    base_model: Path | None = None
    epochs: int | None = None


def _build(
    ds: Dataset, folder: Path, cfg: Config, student: str, step: Step, opts: LoraOptions = LoraOptions()
) -> dict[str, Any]:
    if student == "lora":
        from insource.distill.lora import train_lora

        return train_lora(ds, folder, base_model=opts.base_model, epochs=opts.epochs, step=step)
    return _build_classifier(ds, folder, cfg, strong=student == "classifier-strong", step=step)


def distill(
    cfg: Config,
    task: str,
    *,
    student: str = "classifier",
    dataset: Path | None = None,
    store: Any = None,
    step: Step | None = None,
    base_model: Path | None = None,
    target: float | None = None,
    force: bool = False,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train and register a student; returns `{"model": "TASK@vN", "path", "metrics", ..., "warnings"}`.

    `student="auto"` trains every student of `AUTO_STUDENTS`, registers each (the winner last, so it is the
    task's latest) and returns the one with the highest validation coverage at `target` agreement (default
    0.99), with all of them under `"candidates"`. A validation split too small to show agreement `target` (when
    given, else the route's default floor) is refused unless `force`; what it cannot show (`target`, else 0.99)
    is listed under `"warnings"`.
    """
    check_task_name(task)
    if student not in (*STUDENTS, "auto"):
        raise NotReady(f"unknown student {student!r}: choose one of {', '.join((*STUDENTS, 'auto'))}")
    if target is not None:
        check_target(target)
    if base_model is not None and student != "lora":
        raise NotReady(f"--base-model is for --student lora only (not {student}): add --student lora, or drop it")
    if epochs is not None and student != "lora":
        raise NotReady(f"--epochs is for --student lora only (not {student}): add --student lora, or drop it")
    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:
        raise NotReady(f"--epochs must be between 1 and {MAX_EPOCHS} (got {epochs})")
    say = step or quiet
    if dataset is None:
        if store is None:
            raise NotReady("pass --dataset DIR (no store to look up the newest dataset)")
        dataset = find_dataset(store, task)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    say("reading the dataset")
    ds = load_dataset(dataset)
    min_val, val_why = val_requirement(student, target, force)  # the agreement asked for, else the route floor
    check_trainable(ds, task, classifier=student != "lora", min_val=min_val, val_why=val_why)
    warnings = val_warnings(student, len(ds.split("val")), target)
    if student == "auto":
        picked_at = COMMON_TARGET if target is None else target
        return {**_distill_auto(cfg, task, ds, say, picked_at), "warnings": warnings}
    opts = LoraOptions(base_model, epochs)
    return {**_train_and_register(cfg, task, ds, student, say, opts), "warnings": warnings}


def _builder(
    cfg: Config, task: str, ds: Dataset, student: str, say: Step, opts: LoraOptions = LoraOptions()
) -> Callable[[Path], dict[str, Any]]:
    """`build(folder)` for the registry: trains `student` into the folder and returns model.json's content."""
    started = time.perf_counter()

    def build(folder: Path) -> dict[str, Any]:
        info = _build(ds, folder, cfg, student, say, opts)
        info["metrics"] = {**info.get("metrics", {}), "train_seconds": round(time.perf_counter() - started, 2)}
        info.update(
            student=student,
            task=task,
            template=ds.manifest.get("template") or {},
            dataset=_dataset_info(ds),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        info.setdefault("labels", [])
        return info

    return build


def _card(ds: Dataset) -> Callable[[Path, dict[str, Any]], None]:
    def card(folder: Path, info: dict[str, Any]) -> None:
        (folder / "card.md").write_text(render_card(info, ds.manifest), "utf-8")

    return card


def _registered(name: str, path: Path, student: str) -> dict[str, Any]:
    info = json.loads((path / "model.json").read_text("utf-8"))
    return {"model": name, "path": str(path), "student": student, "metrics": info.get("metrics", {})}


def _train_and_register(
    cfg: Config, task: str, ds: Dataset, student: str, say: Step, opts: LoraOptions = LoraOptions()
) -> dict[str, Any]:
    say("training")
    name, path = register(cfg.registry_path(), task, _builder(cfg, task, ds, student, say, opts), _card(ds))
    return _registered(name, path, student)


def _prefixed(say: Step, prefix: str) -> Step:
    def step(message: str, *, done: int | None = None, total: int | None = None) -> None:
        say(prefix + message, done=done, total=total)

    return step


def _distill_auto(cfg: Config, task: str, ds: Dataset, say: Step, target: float) -> dict[str, Any]:
    """Train each auto candidate into a staging folder and score it on validation at `target`; then register
    the others first and the winner last, so the winner is the task's newest version (`TASK@latest`)."""
    root = cfg.registry_path()
    staged: list[Path] = []
    candidates: list[dict[str, Any]] = []
    try:
        for i, kind in enumerate(AUTO_STUDENTS, start=1):
            step = _prefixed(say, f"[{i}/{len(AUTO_STUDENTS)} {kind}] ")
            step("training")
            staged.append(stage(root, task, _builder(cfg, task, ds, kind, step)))
            step(f"scoring on validation at agreement {target:g}")
            stats = val_at_target(staged[-1], cache_root(cfg), ds, target)
            candidates.append({"model": None, "student": kind, **stats})
        best = pick(candidates)
        results = _register_in_order(root, task, ds, staged, candidates, best, target)
    finally:
        for folder in staged:
            discard(folder)  # a no-op for the registered ones
    winner = candidates[best]
    say(f"picked {winner['model']} ({winner['student']}): val coverage {winner['val_coverage_at_target']:.1%}")
    return {
        **results[best],
        "target_agreement": target,
        "val_coverage_at_target": winner["val_coverage_at_target"],
        "val_agreement_at_threshold": winner["val_agreement_at_threshold"],
        "threshold": winner["threshold"],
        "candidates": candidates,
    }


def _register_in_order(
    root: Path,
    task: str,
    ds: Dataset,
    staged: list[Path],
    candidates: list[dict[str, Any]],
    best: int,
    target: float,
) -> dict[int, dict[str, Any]]:
    """Register the losing candidates, then the winner (noting in its model.json whom it was chosen over)."""
    results: dict[int, dict[str, Any]] = {}
    for i in [*(i for i in range(len(staged)) if i != best), best]:
        if i == best:
            others = [c for j, c in enumerate(candidates) if j != best]
            record_choice(staged[i], candidates[i], others, target)
        name, path = commit(root, task, staged[i], _card(ds))
        candidates[i]["model"] = name
        results[i] = _registered(name, path, candidates[i]["student"])
    return results
