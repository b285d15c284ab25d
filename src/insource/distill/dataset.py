"""Read and validate a dataset folder written by `insource dataset build`.

Light: standard library only. Every problem becomes a `NotReady` with a message saying what is needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insource.errors import NotReady

SPLITS = ("train", "val", "test")
MIN_TRAIN_EXAMPLES = 20
MIN_VAL_EXAMPLES = 5


@dataclass(frozen=True)
class Example:
    id: str
    input: str
    output: str
    teacher_cost_usd: float = 0.0


@dataclass
class Dataset:
    path: Path
    manifest: dict[str, Any]
    splits: dict[str, list[Example]] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.manifest.get("task") or "")

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise NotReady(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        return self.splits[name]


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not folder.is_dir():
        raise NotReady(f"dataset folder {folder} does not exist")
    if not path.is_file():
        raise NotReady(f"{folder} is not a dataset: dataset.json is missing (build one with `insource dataset build`)")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotReady(f"corrupt dataset: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise NotReady(f"corrupt dataset: {path} must hold a JSON object")
    return data


def _parse_line(path: Path, lineno: int, line: str) -> Example:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise NotReady(f"corrupt dataset: {path.name} line {lineno} is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("input"), str) or not isinstance(obj.get("output"), str):
        raise NotReady(f"corrupt dataset: {path.name} line {lineno} needs string fields 'input' and 'output'")
    cost = obj.get("teacher_cost_usd") or 0.0
    if not isinstance(cost, int | float):
        raise NotReady(f"corrupt dataset: {path.name} line {lineno}: 'teacher_cost_usd' must be a number")
    return Example(
        id=str(obj.get("id", f"{path.stem}:{lineno}")),
        input=obj["input"],
        output=obj["output"].strip(),
        teacher_cost_usd=float(cost),
    )


def _read_split(folder: Path, name: str) -> tuple[list[Example], str]:
    path = folder / f"{name}.examples.jsonl"
    if not path.is_file():
        raise NotReady(f"corrupt dataset: {path.name} is missing in {folder}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotReady(f"corrupt dataset: {path.name} is not UTF-8") from None
    examples = [_parse_line(path, i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    return examples, hashlib.sha256(raw).hexdigest()


def load_dataset(folder: Path) -> Dataset:
    """Load a dataset folder (manifest + the three example splits); raises NotReady when it is corrupt."""
    folder = folder.expanduser().resolve()
    manifest = _read_manifest(folder)
    ds = Dataset(path=folder, manifest=manifest)
    for name in SPLITS:
        ds.splits[name], ds.hashes[name] = _read_split(folder, name)
    ds.hashes["dataset.json"] = hashlib.sha256((folder / "dataset.json").read_bytes()).hexdigest()
    return ds


def check_trainable(ds: Dataset, task: str, *, classifier: bool = True, min_train: int = MIN_TRAIN_EXAMPLES) -> None:
    """Refuse datasets that must not or cannot train a student (terms, size, classes, task)."""
    man = ds.manifest
    if man.get("task") not in (None, task):
        raise NotReady(f"dataset {ds.path} is for task {man.get('task')!r}, not {task!r}")
    purpose = man.get("purpose", "train")
    if purpose == "eval":
        raise NotReady(
            f"dataset {ds.path} was built for evaluation only (purpose 'eval'): "
            "rebuild it with `insource dataset build --purpose train` to train a student"
        )
    if purpose != "train":
        raise NotReady(f"dataset {ds.path} has purpose {purpose!r}: training needs a dataset built for 'train'")
    if man.get("training_allowed") is False:
        raise NotReady(f"the terms recorded in {ds.path}/dataset.json forbid training on this dataset")
    train, val = ds.split("train"), ds.split("val")
    if len(train) < min_train:
        raise NotReady(
            f"too few examples: {len(train)} training examples, at least {min_train} are needed "
            "(capture more traffic for this task)"
        )
    if len(val) < MIN_VAL_EXAMPLES:
        raise NotReady(
            f"too few validation examples: {len(val)}, at least {MIN_VAL_EXAMPLES} are needed for calibration"
        )
    classes = {ex.output for ex in train}
    if classifier and man.get("kind") == "generation":
        raise NotReady(
            f"dataset {ds.path} holds a generation task ({len(classes)} distinct answers): "
            "a classifier student answers from a fixed set of labels; use --student lora"
        )
    if classifier and len(classes) < 2:
        only = next(iter(classes)) if classes else ""
        raise NotReady(
            f"a single class: every training answer is {only[:60]!r}; a classifier needs at least "
            "2 distinct teacher answers"
        )


def write_dataset(
    folder: Path,
    task: str,
    splits: dict[str, list[tuple[str, str]]],
    *,
    purpose: str = "train",
    cost_usd: float = 0.0002,
    template: dict[str, Any] | None = None,
) -> Path:
    """Write a dataset folder in the `insource dataset build` format from (input, teacher answer) pairs.

    Used by tests and benchmarks that replay public data as teacher traffic.
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels = sorted({out for pairs in splits.values() for _, out in pairs})
    for name in SPLITS:
        rows, chat = [], []
        for i, (text, out) in enumerate(splits.get(name, [])):
            messages = [{"role": "user", "content": text}, {"role": "assistant", "content": out}]
            rows.append(
                json.dumps(
                    {
                        "id": f"{name}-{i}",
                        "ts": float(i),
                        "input": text,
                        "output": out,
                        "messages": messages,
                        "teacher_cost_usd": cost_usd,
                        "provider": "teacher",
                        "upstream_model": "teacher-1",
                        "terms": "self-hosted",
                        "tenant": "default",
                    }
                )
            )
            chat.append(json.dumps({"messages": messages}))
        (folder / f"{name}.examples.jsonl").write_text("".join(r + "\n" for r in rows), "utf-8")
        (folder / f"{name}.jsonl").write_text("".join(r + "\n" for r in chat), "utf-8")
    manifest = {
        "task": task,
        "kind": "classification",
        "labels": labels,
        "purpose": purpose,
        "template": template or {"slots": ["input"]},
        "counts": {name: len(splits.get(name, [])) for name in SPLITS},
        "providers": {"teacher": sum(len(p) for p in splits.values())},
        "terms": {"self-hosted": "any"},
        "refused": {},
    }
    (folder / "dataset.json").write_text(json.dumps(manifest, indent=2), "utf-8")
    return folder
