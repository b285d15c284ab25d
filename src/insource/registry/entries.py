"""The model registry and the light serving API the gateway uses on its hot path.

Layout: `<root>/<TASK>@v<N>/` with `model.json`, `card.md`, the weights and, after `insource eval`,
`eval.json`. Every version folder owns its files (no links between versions), and `model.json` records each
weight file's size, so a damaged or missing file is seen without loading anything.

Versions count up per task and are never reused: a model is built in a staging folder, a version number is
claimed by creating the marker `<root>/.versions/<TASK>@v<N>` (O_EXCL: concurrent distills never claim the
same one, and deleting a version folder leaves its marker), then the folder is renamed into place.
Imports here stay light: numpy, onnxruntime, tokenizers (the latter two only when loading).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insource.errors import ModelNotFound, NotReady

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
EVAL_FILE = "eval.json"
CARD_FILE = "card.md"
ENCODER_INFO = "encoder.json"
VERSIONS_DIR = ".versions"
# what each weight file is, for messages; also the files a classifier needs when model.json lists none
_ROLES = {
    "encoder.onnx": "the encoder",
    "tokenizer.json": "the tokenizer",
    ENCODER_INFO: "the encoder's export record",
    "head.npz": "the head",
    "head.onnx": "the head's serving graph",
    "lexical.npz": "the lexical view",
}
CLASSIFIER_KINDS = ("classifier", "classifier-strong")
STUDENT_KINDS = (*CLASSIFIER_KINDS, "lora")
_NAME_RE = re.compile(r"^(?P<task>[A-Za-z0-9][A-Za-z0-9_.\-]*)@v(?P<version>[0-9]+)$")
_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Prediction:
    answer: str
    confidence: float
    ood: bool
    catch_all: tuple[float, str] | None = None  # the head's probability of its catch-all label, and that label


def check_task_name(task: str) -> str:
    if not _TASK_RE.match(task):
        hint = re.sub(r"[^A-Za-z0-9_.\-]+", "-", task).strip("-._")
        example = f" (e.g. {hint!r})" if hint and _TASK_RE.match(hint) else ""
        raise NotReady(
            f"invalid task name {task!r}: a student's name (TASK@vN) uses letters, digits, '.', '_' or '-'; "
            f"tag the task's traffic with such a name{example} to distill it"
        )
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
    """model.json of an entry (or a staging folder), checked: its keys, a known student kind, and for a
    version folder that it describes that very version (a hand-copied or hand-edited entry is corrupt)."""
    info = read_json(folder / MODEL_FILE)
    for key in ("name", "task", "version", "student"):
        if key not in info:
            raise NotReady(f"corrupt registry entry {folder.name}: model.json has no {key!r}")
    if info["student"] not in STUDENT_KINDS:
        raise NotReady(
            f"corrupt registry entry {folder.name}: model.json names an unknown student kind {info['student']!r} "
            f"(known: {', '.join(STUDENT_KINDS)})"
        )
    m = _NAME_RE.match(folder.name)
    if m and (info["name"], info["task"], info["version"]) != (folder.name, m["task"], int(m["version"])):
        raise NotReady(
            f"corrupt registry entry {folder.name}: its model.json describes {info['name']!r} "
            f"(task {info['task']!r}, version {info['version']!r}), not this folder"
        )
    return info


def _named(folder: Path) -> list[tuple[str, int, Path]]:
    """Every child of `folder` named like `TASK@vN`, whatever it is (folder, stray file, marker)."""
    if not folder.is_dir():
        return []
    out = []
    for child in folder.iterdir():
        m = _NAME_RE.match(child.name)
        if m:
            out.append((m["task"], int(m["version"]), child))
    return out


def _entries(root: Path) -> list[tuple[str, int, Path]]:
    """The version folders (a stray file named like a version is no entry), sorted by task and version."""
    return sorted(((t, v, p) for t, v, p in _named(root) if p.is_dir()), key=lambda e: (e[0], e[1]))


def _recorded_files(info: dict[str, Any]) -> dict[str, int | None]:
    """Weight files the entry must hold: model.json's record (name → bytes), else the classifier's files."""
    files = info.get("files")
    if isinstance(files, dict) and files:
        return {str(k): v if isinstance(v, int) else None for k, v in files.items()}
    if info.get("student") not in CLASSIFIER_KINDS:
        return {}  # a LoRA student registered before sizes were recorded: nothing known to check
    head = info.get("head")
    mixed = head.get("lexical_weight") if isinstance(head, dict) else None
    needed = ["encoder.onnx", "tokenizer.json", ENCODER_INFO, "head.npz"]
    if isinstance(mixed, int | float) and mixed > 0:
        needed.append("lexical.npz")
    return dict.fromkeys(needed)


def file_problem(folder: Path, info: dict[str, Any]) -> str | None:
    """Cheap check (stat only) that the weight files are there, non-empty and of their registered size (and
    that a classifier has the labels it answers with)."""
    labels = info.get("labels")
    if info.get("student") in CLASSIFIER_KINDS and (not isinstance(labels, list) or not labels):
        return f"corrupt registry entry {folder.name}: model.json has no labels"
    for name, size in sorted(_recorded_files(info).items()):
        what = _ROLES.get(name, "a weight file")
        where = f"corrupt registry entry {folder.name}: {name} ({what})"
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"corrupt registry entry {folder.name}: model.json lists a file outside the folder ({name!r})"
        try:
            st = (folder / name).stat()
        except FileNotFoundError:
            return f"{where} is missing"
        except OSError as exc:
            return f"{where} is unreadable ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return f"{where} is not a file"
        if st.st_size == 0:
            return f"{where} is empty"
        if size is not None and st.st_size != size:
            return f"{where} has {st.st_size} bytes, {size} were registered"
    return None


def entry_problem(folder: Path) -> str | None:
    """Why the entry cannot serve (unreadable model.json, missing or truncated weights), or None: no loading."""
    try:
        info = read_model_info(folder)
    except NotReady as exc:
        return exc.message
    return file_problem(folder, info)


def list_models(root: Path) -> list[dict[str, Any]]:
    """Every registered version; never raises. `status` is "ok" or "damaged", then `problem` says why;
    `error` is set only when model.json itself is unreadable (the entry cannot even be described)."""
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
            problem = file_problem(folder, info)
        except NotReady as exc:
            row.update(student=None, created_at=None, metrics={}, error=exc.message)
            problem = exc.message
        row["status"] = "ok" if problem is None else "damaged"
        if problem is not None:
            row["problem"] = problem
        rows.append(row)
    return rows


def resolve(root: Path, name: str) -> Path:
    """The folder of `TASK@vN`, `TASK@latest` or `TASK` (both: the newest version that is not damaged)."""
    task, sep, version = name.partition("@")
    if not _TASK_RE.match(task) or (sep and version != "latest" and not _NAME_RE.match(name)):
        raise ModelNotFound(f"invalid model name {name!r}: expected TASK@vN, TASK@latest or TASK")
    if not sep or version == "latest":
        for t, _v, folder in reversed(_entries(root)):
            if t == task and entry_problem(folder) is None:
                return folder  # `latest` skips damaged versions (see `insource models list`)
        raise ModelNotFound(f"no usable model registered for task {task!r} in {root}")
    folder = root / name
    if not folder.is_dir():
        raise ModelNotFound(f"model {name} is not registered in {root}")
    return folder


def _claim_version(root: Path, task: str) -> int:
    """Claim the next never-used version of `task`: O_EXCL-create its marker in `<root>/.versions/`."""
    marks = root / VERSIONS_DIR
    try:
        marks.mkdir(exist_ok=True)
    except OSError as exc:
        raise NotReady(f"cannot keep version numbers in {marks}: {exc.strerror}") from None
    used = [v for t, v, _ in _named(marks) + _named(root) if t == task]
    version = max(used, default=0) + 1
    while True:
        try:
            os.close(os.open(marks / f"{task}@v{version}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return version
        except FileExistsError:
            version += 1  # claimed concurrently by another distill
        except OSError as exc:
            raise NotReady(f"cannot claim a version in {marks}: {exc.strerror}") from None


def _file_sizes(folder: Path) -> dict[str, int]:
    skip = {MODEL_FILE, CARD_FILE, EVAL_FILE}
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.relative_to(folder).as_posix() not in skip
    }


def stage(root: Path, task: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a model in a new staging folder under `root` (not registered); `commit` or `discard` it.

    `build(folder)` writes the weights and returns model.json's content (without name/version); nothing is
    left behind when it raises. The staged model.json (version 0) is complete enough to score the model.
    """
    check_task_name(task)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        staging.chmod(0o755)
        info = build(staging)
        info.update(files=_file_sizes(staging), name=f"{task}@staging", task=task, version=0)
        write_json_atomic(staging / MODEL_FILE, info)
    except BaseException:
        discard(staging)
        raise
    return staging


def discard(staging: Path) -> None:
    """Remove a staged model that was not committed (a no-op once it was)."""
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)


def commit(
    root: Path, task: str, staging: Path, finalize: Callable[[Path, dict[str, Any]], None] | None = None
) -> tuple[str, Path]:
    """Rename a staged model to a newly claimed `TASK@vN`; `finalize(folder, info)` runs once the name is known."""
    info = read_model_info(staging)
    for _ in range(100):
        version = _claim_version(root, task)
        name = f"{task}@v{version}"
        info.update(name=name, task=task, version=version)
        write_json_atomic(staging / MODEL_FILE, info)
        if finalize is not None:
            finalize(staging, info)
        target = root / name
        if target.exists() or target.is_symlink():
            continue  # something not made by distill (e.g. a stray file) holds the name: take the next one
        try:
            os.rename(staging, target)
        except OSError as exc:
            if target.exists():
                continue
            raise NotReady(f"cannot register {name} in {root}: {exc.strerror}") from None
        return name, target
    raise NotReady(f"could not allocate a version for task {task!r} in {root}")


def register(
    root: Path,
    task: str,
    build: Callable[[Path], dict[str, Any]],
    finalize: Callable[[Path, dict[str, Any]], None] | None = None,
) -> tuple[str, Path]:
    """Build a model in a staging folder, then rename it to a new `TASK@vN` (see `stage` and `commit`)."""
    staging = stage(root, task, build)
    try:
        return commit(root, task, staging, finalize)
    finally:
        discard(staging)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text("ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass  # no procfs: fall back to setting and restoring it
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path) -> None:
    """Give a temp file (mkstemp makes them 0600) the mode a plain new file would have (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~_umask())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        publish_mode(tmp)
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
        idx, conf, ood, catch_all = self._head.predict_full(emb, lexical)
        label = self.labels[self._head.catch_all] if catch_all is not None else ""
        return [
            Prediction(
                answer=self.labels[int(i)],
                confidence=float(c),
                ood=bool(o),
                catch_all=(float(catch_all[row]), label) if catch_all is not None else None,
            )
            for row, (i, c, o) in enumerate(zip(idx, conf, ood, strict=True))
        ]


def read_thresholds(folder: Path) -> dict[str, float]:
    path = folder / EVAL_FILE
    if not path.is_file():
        return {}
    data = read_json(path)
    raw = data.get("thresholds", {})
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)} if isinstance(raw, dict) else {}


def read_encoder_info(folder: Path) -> dict[str, Any]:
    """encoder.json: how the encoder was exported; `source` keys its embedding cache."""
    info = read_json(folder / ENCODER_INFO)
    if not isinstance(info.get("source"), str) or not info["source"]:
        raise NotReady(f"corrupt registry entry {folder.name}: {ENCODER_INFO} has no 'source'")
    return info


def model_labels(folder: Path, info: dict[str, Any]) -> list[str]:
    labels = info.get("labels")
    if not isinstance(labels, list) or not labels:
        raise NotReady(f"corrupt registry entry {folder.name}: model.json has no labels")
    return [str(x) for x in labels]


def runtime_load_error(exc: Exception) -> bool:
    """True for what onnxruntime (its own types) or tokenizers (a bare `Exception`) raise for a damaged file."""
    return type(exc).__module__.startswith("onnxruntime") or type(exc) is Exception


def check_weights(folder: Path) -> None:
    """Everything about the entry that can be checked without loading the models; NotReady names the file."""
    from insource.registry.encoder import TOKENIZER_FILE

    problem = file_problem(folder, read_model_info(folder))
    if problem is not None:
        raise NotReady(problem)
    read_encoder_info(folder)
    read_json(folder / TOKENIZER_FILE)  # a truncated tokenizer is unparsable JSON: say so by name


def load_parts(folder: Path, labels: list[Any], workers: int) -> tuple[Any, Any, Any]:
    """(encoder, head, lexical view or None) of a classifier student; a damaged file → NotReady, naming it."""
    import zipfile

    from insource.registry.encoder import OnnxEncoder
    from insource.registry.head import Head
    from insource.registry.lexical import Lexical

    check_weights(folder)
    try:
        encoder = OnnxEncoder(folder, workers=workers)
        head = Head.load(folder, serving=True)
        lexical = Lexical.load(folder) if head.lexical_weight > 0 else None
    except ImportError as exc:
        raise NotReady(f"serving a classifier student needs the [student] extra ({exc})") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise NotReady(f"corrupt registry entry {folder.name}: cannot load its weights ({exc})") from None
    except Exception as exc:
        if runtime_load_error(exc):
            raise NotReady(f"corrupt registry entry {folder.name}: cannot load the encoder ({exc})") from None
        raise
    if head.n_classes != len(labels):
        raise NotReady(f"corrupt registry entry {folder.name}: head has {head.n_classes} classes, {len(labels)} labels")
    if head.lexical_weight > 0 and (lexical is None or lexical.weights.shape != (lexical.n_features, len(labels))):
        raise NotReady(f"corrupt registry entry {folder.name}: its lexical view is missing or does not fit the head")
    return encoder, head, lexical


def verify_entry(folder: Path) -> str | None:
    """`entry_problem`, then for a classifier whether its weights really load (slower: one entry, not a list)."""
    problem = entry_problem(folder)
    if problem is not None:
        return problem
    info = read_model_info(folder)
    if info["student"] not in CLASSIFIER_KINDS:
        return None
    try:
        load_parts(folder, model_labels(folder, info), workers=1)
    except NotReady as exc:
        return exc.message
    return None


def _thresholds_if_readable(folder: Path) -> dict[str, float]:
    """Serving does not need eval.json (routes keep their threshold): a damaged one is reported, not fatal."""
    try:
        return read_thresholds(folder)
    except NotReady as exc:
        log.warning("%s (run `insource eval` again to rewrite it)", exc.message)
        return {}


def _load(folder: Path, workers: int) -> Student:
    info = read_model_info(folder)
    if info["student"] not in CLASSIFIER_KINDS:
        raise NotReady(f"{folder.name} is a {info['student']} student: serve it with vLLM or llama.cpp (docs/lora.md)")
    labels = model_labels(folder, info)
    encoder, head, lexical = load_parts(folder, labels, workers)
    return Student(
        name=str(info["name"]),
        task=str(info["task"]),
        folder=folder,
        info=info,
        labels=labels,
        template=dict(info.get("template") or {}),
        thresholds=_thresholds_if_readable(folder),
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
