"""Read and validate a dataset folder written by `insource dataset build`.

Light: standard library only (plus the shipped terms profiles). Every problem becomes a `NotReady` with a
message saying what is needed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insource.capture.terms import load_profiles, resolve
from insource.errors import NotReady

SPLITS = ("train", "val", "test")
MIN_TRAIN_EXAMPLES = 20
MIN_VAL_EXAMPLES = 5
STRICTNESS = {"any": 0, "internal": 1, "none": 2}


@dataclass(frozen=True)
class Example:
    id: str
    input: str
    output: str
    teacher_cost_usd: float = 0.0
    provider: str = ""
    terms: str = ""
    terms_category: str | None = None  # as recorded by `insource dataset build` (None: an older dataset)


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
    category = obj.get("terms_category")
    return Example(
        id=str(obj.get("id", f"{path.stem}:{lineno}")),
        input=obj["input"],
        output=obj["output"].strip(),
        teacher_cost_usd=float(cost),
        provider=str(obj.get("provider") or ""),
        terms=str(obj.get("terms") or ""),
        terms_category=category if isinstance(category, str) else None,
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


def check_trainable(
    ds: Dataset,
    task: str,
    *,
    classifier: bool = True,
    min_train: int = MIN_TRAIN_EXAMPLES,
    min_val: int = MIN_VAL_EXAMPLES,
    val_why: str = "for calibration",
) -> None:
    """Refuse datasets that must not or cannot train a student (terms, size, classes, task); the validation
    split is checked last, against `min_val` (`val_why` says what it is needed for)."""
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
    check_terms(ds, classifier=classifier)
    train, val = ds.split("train"), ds.split("val")
    if len(train) < min_train:
        raise NotReady(
            f"too few examples: {len(train)} training examples, at least {min_train} are needed "
            "(capture more traffic for this task)"
        )
    classes = {ex.output for ex in train}
    if classifier and man.get("kind") == "generation":
        why = man.get("kind_reason") or f"{len(classes)} distinct answers"
        raise NotReady(
            f"dataset {ds.path} holds a generation task ({why}): a classifier student answers from a fixed set "
            "of labels; train a generative one with --student lora --base-model DIR (docs/lora.md), or rebuild "
            "the dataset with --kind classification if its answers are labels"
        )
    if classifier and len(classes) < 2:
        only = next(iter(classes)) if classes else ""
        raise NotReady(
            f"a single class: every training answer is {only[:60]!r}; a classifier needs at least "
            "2 distinct teacher answers"
        )
    if len(val) < min_val:
        raise NotReady(f"too few validation examples: {len(val)}, at least {min_val} are needed {val_why}")


def _manifest_terms(man: dict[str, Any], name: str) -> dict[str, Any]:
    """The manifest's entry for terms profile `name` (`{"category", "clause", ...}`; older helpers wrote only
    the category string)."""
    terms = man.get("terms")
    entry = terms.get(name) if isinstance(terms, dict) else None
    if isinstance(entry, str):
        return {"category": entry}
    return entry if isinstance(entry, dict) else {}


def example_category(ex: Example, man: dict[str, Any]) -> tuple[str, str]:
    """(category, clause) of an example's terms: the strictest of what the example and the manifest record;
    when neither records one, the shipped profile of that name (an unknown name is 'none')."""
    entry = _manifest_terms(man, ex.terms)
    recorded = [c for c in (ex.terms_category, entry.get("category")) if c is not None]
    clause = str(entry.get("clause") or "")
    if not recorded:
        profile = resolve(load_profiles(), ex.terms)
        recorded, clause = [profile.category], clause or profile.clause
    unknown = [c for c in recorded if c not in STRICTNESS]
    category = "none" if unknown else max(recorded, key=STRICTNESS.__getitem__)
    return category, clause or f"terms profile {ex.terms!r}"


def terms_violations(ds: Dataset, *, classifier: bool) -> list[str]:
    """Why the terms recorded per example forbid training this student (empty: allowed).

    Checked on every example, not on the manifest's `purpose` alone, so a hand-edited manifest cannot turn
    eval-only data into training data. 'internal' (classifier carve-out) data trains only a classifier, and only
    when the dataset was built with the logged --allow-internal carve-out.
    """
    man = ds.manifest
    carve_out = isinstance(man.get("carve_out"), dict) and man["carve_out"].get("allow_internal") is True
    internal_ok = classifier and carve_out
    groups: Counter[tuple[str, str, str, str]] = Counter()
    for ex in (e for name in SPLITS for e in ds.splits.get(name, [])):
        category, clause = example_category(ex, man)
        if category == "none" or (category == "internal" and not internal_ok):
            groups[(ex.provider or "?", ex.terms or "?", category, clause)] += 1
    out = _manifest_category_violations(man, internal_ok=internal_ok) if not groups else []
    for (provider, terms, category, clause), count in sorted(groups.items()):
        if category == "none":
            why = "these terms forbid training any model on its outputs"
        elif classifier:
            why = "these terms allow only an internal classifier, and this dataset was built without --allow-internal"
        else:
            why = (
                "these terms allow only internal classifiers/embeddings; a generative (LoRA) student imitates the "
                "teacher and is refused (a classifier student may use the --allow-internal carve-out)"
            )
        where = f"{count} example(s) from provider {provider!r} under terms profile {terms!r} [{category}]"
        out.append(f"{where}: {why}. Clause: {clause}")
    return out


def _manifest_category_violations(man: dict[str, Any], *, internal_ok: bool) -> list[str]:
    """The manifest's own count of examples per terms category (`terms_categories`), checked as well."""
    counts = man.get("terms_categories")
    if not isinstance(counts, dict):
        return []
    allowed = ("any", "internal") if internal_ok else ("any",)
    bad = {c: n for c, n in counts.items() if n and c not in allowed}
    return [f"the manifest records {n} example(s) under terms category {c!r}" for c, n in sorted(bad.items())]


def check_terms(ds: Dataset, *, classifier: bool) -> None:
    """Refuse training when the terms recorded in the dataset forbid it for this kind of student."""
    problems = terms_violations(ds, classifier=classifier)
    if problems:
        student = "a classifier" if classifier else "a generative (LoRA)"
        raise NotReady(
            f"the terms recorded in dataset {ds.path} forbid training {student} student:\n  - "
            + "\n  - ".join(problems)
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
                        "terms_category": "any",
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
        "template": template,  # None: the student's input is the last user message's text
        "counts": {name: len(splits.get(name, [])) for name in SPLITS},
        "providers": {"teacher": sum(len(p) for p in splits.values())},
        "terms": {"self-hosted": {"count": sum(len(p) for p in splits.values()), "category": "any"}},
        "terms_categories": {"any": sum(len(p) for p in splits.values())},
        "training_allowed": purpose == "train",
        "refused": {},
    }
    (folder / "dataset.json").write_text(json.dumps(manifest, indent=2), "utf-8")
    return folder
