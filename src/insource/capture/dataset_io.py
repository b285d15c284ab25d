"""Writing a dataset folder atomically: everything goes into a temporary sibling folder, then one rename."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from insource.errors import NotReady

SPLITS = ("train", "val", "test")
EXAMPLE_KEYS = (
    "id", "ts", "input", "output", "messages", "teacher_cost_usd", "provider", "upstream_model", "terms",
    "terms_category", "tenant",
)  # fmt: skip
MANIFEST = "dataset.json"


def _holds(folder: Path, path: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (symlinks resolved; either may not exist yet)."""
    folder, path = folder.resolve(), path.resolve()
    return path == folder or folder in path.parents


def check_out(out: Path, force: bool, protected: Sequence[Path] = (), sealed: Sequence[Path] = ()) -> None:
    """Refuse anything but a missing or empty folder, unless `force` (the folder is then replaced atomically).

    Never a folder that is or holds one of `protected` (the store, the config's folder, the model registry,
    the writer's spool), nor one that is or lies inside one of `sealed` (the registry, the spool), even
    when it also looks like a dataset and even when the protected path does not exist yet.
    """
    for path in protected:
        if _holds(out, path):
            raise NotReady(
                f"--out {out} holds {path} (the store, the config or the model registry, or the writer's spool): "
                "choose a new folder for the dataset; nothing was replaced"
            )
    for path in sealed:
        if _holds(path, out):
            raise NotReady(
                f"--out {out} lies inside {path} (the model registry or the writer's spool): "
                "choose a folder outside it; nothing was written"
            )
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise NotReady(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise NotReady(f"--out {out} exists and is not empty (use --force to replace it)")


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    parent = out.parent.absolute()
    created = [p for p in (parent, *parent.parents) if not p.exists()]  # folders this build creates
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise NotReady(f"cannot write the dataset to {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Undo the parent folders a failed build created (deepest first); keep any that are not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _publish(tmp: Path, out: Path, force: bool, protected: Sequence[Path], sealed: Sequence[Path]) -> None:
    """Move the finished folder into place (replacing an empty folder or, with force, a previous dataset)."""
    old: Path | None = None
    check_out(out, force, protected, sealed)  # again: the folder may have changed while the build ran
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        tmp.rename(out)
    except OSError as exc:
        if old is not None and not out.exists():
            old.rename(out)
        raise NotReady(f"cannot write the dataset to {out}: {exc.strerror or exc}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")


def chat_record(example: dict[str, Any]) -> dict[str, Any]:
    """OpenAI fine-tuning chat format: the (redacted) prompt messages plus the teacher's answer."""
    return {"messages": [*example["messages"], {"role": "assistant", "content": example["output"]}]}


def public_example(example: dict[str, Any]) -> dict[str, Any]:
    return {k: example[k] for k in EXAMPLE_KEYS}


def _parquet(path: Path, examples: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise NotReady("--format parquet needs pyarrow: pip install 'insource[student]'") from None
    columns: dict[str, list[Any]] = {k: [] for k in EXAMPLE_KEYS}
    for ex in examples:
        for k in EXAMPLE_KEYS:
            columns[k].append(orjson.dumps(ex[k]).decode() if k == "messages" else ex[k])
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("ts", pa.float64()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("messages", pa.string()),  # JSON text of the message list
            ("teacher_cost_usd", pa.float64()),
            ("provider", pa.string()),
            ("upstream_model", pa.string()),
            ("terms", pa.string()),
            ("terms_category", pa.string()),
            ("tenant", pa.string()),
        ]
    )
    pq.write_table(pa.table(columns, schema=schema), path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_dataset(
    out: Path,
    splits: dict[str, list[dict[str, Any]]],
    manifest: dict[str, Any],
    *,
    fmt: str,
    force: bool,
    protected: Sequence[Path] = (),
    sealed: Sequence[Path] = (),
) -> None:
    """Write split files, examples, README and manifest (with file hashes), then publish atomically."""
    with _staging(out) as tmp:
        for name in SPLITS:
            rows = splits.get(name, [])
            if fmt == "parquet":
                _parquet(tmp / f"{name}.parquet", rows)
            else:
                _jsonl(tmp / f"{name}.jsonl", [chat_record(ex) for ex in rows])
            _jsonl(tmp / f"{name}.examples.jsonl", [public_example(ex) for ex in rows])
        (tmp / "README.md").write_text(render_readme(manifest), encoding="utf-8")
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        _publish(tmp, out, force, protected, sealed)


def render_readme(m: dict[str, Any]) -> str:
    c = m["counts"]
    lines = [
        f"# Dataset: {m['task']}",
        "",
        f"Built {m['created_at']} for **{m['purpose']}** from captured traffic (format {m['format']}).",
        "",
        f"- Examples: train {c['train']}, val {c['val']}, test {c['test']} ({m['split']} split"
        + (", test is strictly later than train)" if m["split"] == "time" else f", seed {m['seed']})"),
        f"- Kind: {m['kind']}"
        + (f" ({len(m['labels'])} labels)" if m["labels"] else "")
        + (f" (set by --kind; inferred: {m['kind_inferred']})" if m["kind_source"] == "--kind" else ""),
        f"- Duplicates removed: {m['dedup']['exact']} exact, {m['dedup']['near']} near",
        f"- Selected captures: {m['selected']}; left out: {m['skipped'] or 'none'}",
        f"- Captures of opted-out tenants excluded: {m['opted_out_excluded']}",
        "",
        "## Provenance",
        "",
    ]
    for name, p in m["providers"].items():
        models = ", ".join(f"{k} ({v})" for k, v in p["upstream_models"].items())
        terms = ", ".join(f"{k} ({v})" for k, v in p["terms"].items())
        lines.append(f"- {name}: {p['count']} examples; models {models}; terms {terms}")
    lines += ["", "## Terms", ""]
    for name, t in m["terms"].items():
        lines.append(f"- `{name}` ({t['category']}, {t['count']} examples): {t['summary']}")
    if m["carve_out"]:
        lines.append(f"- Internal-classifier carve-out used (--allow-internal): {m['carve_out']['examples']}")
    if m["refused"]:
        lines += ["", "## Refused by the terms guard", ""]
        for name, r in m["refused"].items():
            lines.append(f"- {name}: {r['count']} examples under `{r['terms']}` ({r['category']}). {r['clause']}")
    red = m["redaction"]
    lines += [
        "",
        "## Redaction",
        "",
        f"- Redactors run (examples): {red['redactors_run'] or 'none'}",
        f"- Replacements: {red['replacements'] or 'none'}; examples without redaction: {red['unredacted_examples']}",
        "",
    ]
    return "\n".join(lines)
