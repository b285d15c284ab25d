"""The model registry and the light serving API the gateway uses on its hot path.

Layout: `<root>/<TASK>@v<N>/` with `model.json`, `card.md`, the weights and, after `insource eval`,
`eval.json`. Versions count up per task and never overwrite: a model is built in a staging folder and
renamed into place (rename onto an existing non-empty folder fails, so concurrent distills take the next
version). Imports here stay light: numpy, onnxruntime, tokenizers (the latter two only when loading).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insource.errors import ModelNotFound, NotReady

MODEL_FILE = "model.json"
EVAL_FILE = "eval.json"
CLASSIFIER_KINDS = ("classifier", "classifier-strong")
_NAME_RE = re.compile(r"^(?P<task>[A-Za-z0-9][A-Za-z0-9_.\-]*)@v(?P<version>[0-9]+)$")
_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Prediction:
    answer: str
    confidence: float
    ood: bool


def check_task_name(task: str) -> str:
    if not _TASK_RE.match(task):
        raise NotReady(f"invalid task name {task!r}: use letters, digits, '.', '_' or '-'")
    return task


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise NotReady(f"corrupt registry entry {path.parent.name}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotReady(f"corrupt registry entry {path.parent.name}: {path.name} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise NotReady(f"corrupt registry entry {path.parent.name}: {path.name} must hold an object")
    return data


def read_model_info(folder: Path) -> dict[str, Any]:
    info = read_json(folder / MODEL_FILE)
    for key in ("name", "task", "version", "student"):
        if key not in info:
            raise NotReady(f"corrupt registry entry {folder.name}: model.json has no {key!r}")
    return info


def _entries(root: Path) -> list[tuple[str, int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _NAME_RE.match(child.name)
        if m and child.is_dir():
            out.append((m["task"], int(m["version"]), child))
    return sorted(out, key=lambda e: (e[0], e[1]))


def list_models(root: Path) -> list[dict[str, Any]]:
    """Every registered version; a corrupt entry is listed with an `error`, never raised."""
    rows: list[dict[str, Any]] = []
    for task, version, folder in _entries(root):
        row: dict[str, Any] = {"name": folder.name, "task": task, "version": version, "path": str(folder)}
        try:
            info = read_model_info(folder)
            metrics = info.get("metrics")
            row.update(
                student=info["student"],
                created_at=info.get("created_at"),
                metrics=metrics if isinstance(metrics, dict) else {},
            )
        except NotReady as exc:
            row.update(student=None, created_at=None, metrics={}, error=exc.message)
        rows.append(row)
    return rows


def resolve(root: Path, name: str) -> Path:
    """The folder of `TASK@vN`, `TASK@latest` or `TASK` (the newest valid version)."""
    task, _, version = name.partition("@")
    if not task or not _TASK_RE.match(task):
        raise ModelNotFound(f"invalid model name {name!r}: expected TASK@vN or TASK@latest")
    if version in ("", "latest"):
        for t, _v, folder in reversed(_entries(root)):
            if t != task:
                continue
            try:
                read_model_info(folder)
            except NotReady:
                continue  # `latest` is the newest valid version; a corrupt one is skipped
            return folder
        raise ModelNotFound(f"no model registered for task {task!r} in {root}")
    if not _NAME_RE.match(name):
        raise ModelNotFound(f"invalid model name {name!r}: expected TASK@vN or TASK@latest")
    folder = root / name
    if not folder.is_dir():
        raise ModelNotFound(f"model {name} is not registered in {root}")
    return folder


def next_version(root: Path, task: str) -> int:
    return max((v for t, v, _ in _entries(root) if t == task), default=0) + 1


def register(
    root: Path,
    task: str,
    build: Callable[[Path], dict[str, Any]],
    finalize: Callable[[Path, dict[str, Any]], None] | None = None,
) -> tuple[str, Path]:
    """Build a model in a staging folder, then rename it to the next free `TASK@vN`.

    `build(folder)` writes the weights and returns model.json's content (without name/version). Nothing
    is left behind when it raises. `finalize(folder, info)` runs once the name is known (e.g. the card).
    """
    check_task_name(task)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    staging.chmod(0o755)
    try:
        info = build(staging)
        for _ in range(1000):
            version = next_version(root, task)
            name = f"{task}@v{version}"
            info.update(name=name, task=task, version=version)
            (staging / MODEL_FILE).write_text(json.dumps(info, indent=2, sort_keys=True), "utf-8")
            if finalize is not None:
                finalize(staging, info)
            target = root / name
            if target.exists():
                continue
            try:
                os.rename(staging, target)
            except OSError:
                continue  # another distill took this version first: take the next one
            return name, target
        raise NotReady(f"could not allocate a version for task {task!r} in {root}")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Student:
    """A registered classifier student, ready to answer. Thread-safe; `predict` is batch-friendly."""

    name: str
    task: str
    folder: Path
    info: dict[str, Any]
    labels: list[str]
    template: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)
    _encoder: Any = None
    _head: Any = None
    _lexical: Any = None

    def predict(self, inputs: list[str]) -> list[Prediction]:
        if not inputs:
            return []
        emb = self._encoder.encode(list(inputs))
        lexical = self._lexical.proba(list(inputs)) if self._lexical is not None else None
        idx, conf, ood = self._head.predict(emb, lexical)
        return [
            Prediction(answer=self.labels[int(i)], confidence=float(c), ood=bool(o))
            for i, c, o in zip(idx, conf, ood, strict=True)
        ]


def read_thresholds(folder: Path) -> dict[str, float]:
    path = folder / EVAL_FILE
    if not path.is_file():
        return {}
    data = read_json(path)
    raw = data.get("thresholds", {})
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)} if isinstance(raw, dict) else {}


def load_parts(folder: Path, labels: list[Any], workers: int) -> tuple[Any, Any, Any]:
    """(encoder, head, lexical view or None) of a classifier student; a damaged file → NotReady, naming it."""
    import zipfile

    from insource.distill.encoder import OnnxEncoder
    from insource.distill.head import Head
    from insource.distill.lexical import Lexical

    try:
        encoder = OnnxEncoder(folder, workers=workers)
        head = Head.load(folder, serving=True)
        lexical = Lexical.load(folder) if head.lexical_weight > 0 else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise NotReady(f"corrupt registry entry {folder.name}: cannot load its weights ({exc})") from None
    except Exception as exc:  # onnxruntime raises its own exception types for a damaged graph
        if type(exc).__module__.startswith("onnxruntime"):
            raise NotReady(f"corrupt registry entry {folder.name}: cannot load encoder.onnx ({exc})") from None
        raise
    if head.n_classes != len(labels):
        raise NotReady(f"corrupt registry entry {folder.name}: head has {head.n_classes} classes, {len(labels)} labels")
    if head.lexical_weight > 0 and (lexical is None or lexical.weights.shape != (lexical.n_features, len(labels))):
        raise NotReady(f"corrupt registry entry {folder.name}: its lexical view is missing or does not fit the head")
    return encoder, head, lexical


def _load(folder: Path, workers: int) -> Student:
    info = read_model_info(folder)
    if info["student"] not in CLASSIFIER_KINDS:
        raise NotReady(f"{folder.name} is a {info['student']} student: serve it with vLLM or llama.cpp (docs/lora.md)")
    labels = info.get("labels")
    if not isinstance(labels, list) or not labels:
        raise NotReady(f"corrupt registry entry {folder.name}: model.json has no labels")
    encoder, head, lexical = load_parts(folder, labels, workers)
    return Student(
        name=str(info["name"]),
        task=str(info["task"]),
        folder=folder,
        info=info,
        labels=[str(x) for x in labels],
        template=dict(info.get("template") or {}),
        thresholds=read_thresholds(folder),
        _encoder=encoder,
        _head=head,
        _lexical=lexical,
    )


_cache: dict[tuple[str, int, float], Student] = {}
_cache_lock = threading.Lock()


def load_student(root: Path, name: str, *, workers: int = 1) -> Student:
    """Load (cached per folder and eval.json version) the student `name` from the registry at `root`."""
    folder = resolve(root, name)
    eval_path = folder / EVAL_FILE
    stamp = eval_path.stat().st_mtime if eval_path.is_file() else 0.0
    key = (str(folder.resolve()), workers, stamp)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    student = _load(folder, workers)
    with _cache_lock:
        for stale in [k for k in _cache if k[0] == key[0] and k[1] == workers]:
            del _cache[stale]  # an older eval.json's thresholds
        _cache[key] = student
    return student
