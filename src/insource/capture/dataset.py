"""Dataset builder: captured teacher traffic of one task -> train/val/test files with provenance.

Pipeline: select (task, status 200, output present, consent, teacher-answered, time window) -> terms guard
(per provider profile and purpose) -> template inference -> examples (input = the template's varying slot,
output = the teacher's trimmed answer) -> dedup (exact, then near) -> split (time by default: test is
strictly later than train) -> files written into a temporary folder, then renamed into place -> audit row.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from insource.capture.dataset_feedback import FeedbackMode, apply_feedback
from insource.capture.dataset_io import check_out, write_dataset
from insource.capture.slots import Template, infer_template
from insource.capture.stats import Kind, answer_key, kind_and_reason, normalise
from insource.capture.terms import TermsProfile, load_profiles, resolve
from insource.config import UNDECLARED_TERMS, Config
from insource.errors import NotReady
from insource.store import Store, audit_queries, capture_queries

log = logging.getLogger("insource.dataset")

Purpose = Literal["train", "eval"]
SplitMode = Literal["time", "random"]
Format = Literal["openai-jsonl", "parquet"]
SPLITS = ("train", "val", "test")


class TermsRefused(NotReady):
    """Every selected example is refused by the terms guard."""

    def __init__(self, message: str, refused: dict[str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class BuildOptions:
    task: str
    out: Path
    purpose: Purpose = "train"
    since: float | None = None
    until: float | None = None
    dedup: bool = True
    split: SplitMode = "time"
    fmt: Format = "openai-jsonl"
    force: bool = False
    allow_internal: bool = False
    seed: int = 0
    kind: Kind | None = None  # --kind: overrides the inferred classification/generation (recorded)
    feedback: FeedbackMode | None = None  # --feedback: drop answers scored negative / use corrections (recorded)


@dataclass
class BuildResult:
    out: Path
    task: str
    counts: dict[str, int]
    refused: dict[str, dict[str, Any]]
    providers: dict[str, dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The exact `--json` contract."""
        return json_summary(self.out, self.task, self.counts, self.refused, self.providers)


def json_summary(
    out: Path,
    task: str,
    counts: dict[str, int] | None = None,
    refused: dict[str, dict[str, Any]] | None = None,
    providers: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`insource dataset build --json`: one object, also when nothing was written (counts zero)."""
    return {
        "out": str(out),
        "task": task,
        "counts": counts or dict.fromkeys(SPLITS, 0),
        "refused": refused or {},
        "providers": providers or {},
    }


# -- selection -------------------------------------------------------------------------------
def known_tasks(store: Store) -> list[str]:
    return capture_queries.known_tasks(store)


def opted_out_tenants(cfg: Config) -> frozenset[str]:
    """Tenants whose capture is switched off (`[capture.tenants.X] enabled = false`): never exported, including
    what was captured before they opted out."""
    return frozenset(name for name, tenant in cfg.capture.tenants.items() if not tenant.enabled)


def select_rows(
    store: Store, opts: BuildOptions, opted_out: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Eligible capture rows of the task, and counts of what was left out and why."""
    tasks = known_tasks(store)
    if opts.task not in tasks:
        known = ", ".join(tasks[:20]) or "none yet"
        raise NotReady(f"unknown task {opts.task!r} (known tasks: {known})")
    since = opts.since if opts.since is not None else float("-inf")
    until = opts.until if opts.until is not None else float("inf")
    skipped: Counter[str] = Counter()
    rows = []
    for row in capture_queries.task_captures(store, opts.task, since, until):
        if not row["consent"]:
            skipped["no_consent"] += 1
        elif row["tenant"] in opted_out:
            skipped["tenant_opted_out"] += 1
        elif row["status"] != 200:
            skipped["not_200"] += 1
        elif row["output"] is None or not str(row["output"]).strip():
            skipped["no_output"] += 1
        elif row["provider"] is None:
            skipped["in_house"] += 1  # a student's own answer is never a training target
        else:
            rows.append(row)
    if not rows:
        window = "" if opts.since is None and opts.until is None else " in the given --since/--until window"
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no captures"
        raise NotReady(f"empty selection: task {opts.task!r} has no teacher answers with status 200{window} ({detail})")
    return rows, dict(skipped)


def load_messages(store: Store, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Resolve each row's message hashes from `blobs` (id -> messages)."""
    hashes = sorted({h for r in rows for h in orjson.loads(r["messages"])})
    blobs = {h: orjson.loads(data) for h, data in capture_queries.blobs(store, hashes).items()}
    out = {}
    for r in rows:
        ids = orjson.loads(r["messages"])
        missing = [h for h in ids if h not in blobs]
        if missing:
            raise NotReady(f"capture {r['id']} references {len(missing)} missing message blob(s): store is damaged")
        out[r["id"]] = [blobs[h] for h in ids]
    return out


# -- terms guard -----------------------------------------------------------------------------
def _provider_keys(pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    per_provider = Counter(p for p, _ in pairs)
    return {(p, t): p if per_provider[p] == 1 else f"{p} [{t}]" for p, t in pairs}


def apply_guard(
    rows: list[dict[str, Any]], profiles: dict[str, TermsProfile], opts: BuildOptions
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """Split rows into allowed and refused-by-terms (grouped per provider); plus warnings."""
    allowed, warnings = [], []
    refused_rows: dict[tuple[str, str], int] = defaultdict(int)
    unknown: set[str] = set()
    for row in rows:
        profile = resolve(profiles, row["terms"])
        if profile.origin == "unknown":
            unknown.add(profile.name)
        if profile.allows(opts.purpose, allow_internal=opts.allow_internal):
            allowed.append(row)
        else:
            refused_rows[(row["provider"], profile.name)] += 1
    for name in sorted(unknown):
        warnings.append(resolve(profiles, name).summary)
    keys = _provider_keys(set(refused_rows))
    refused = {}
    for (provider, terms), count in sorted(refused_rows.items()):
        profile = resolve(profiles, terms)
        refused[keys[(provider, terms)]] = {
            "count": count,
            "provider": provider,
            "terms": terms,
            "category": profile.category,
            "clause": profile.clause,
            "source": profile.source,
            "date": profile.date,
            "reason": _reason(profile),
        }
    return allowed, refused, warnings


def _reason(profile: TermsProfile) -> str:
    if profile.origin == "unknown" or profile.name == UNDECLARED_TERMS:
        return profile.summary
    if profile.category == "internal":
        return (
            f"terms profile {profile.name!r} allows training only internal classifiers/embeddings that are "
            "not offered to third parties; pass --allow-internal to use this carve-out (it is logged)"
        )
    return f"terms profile {profile.name!r} forbids training models on these outputs"


def refusal_message(task: str, refused: dict[str, dict[str, Any]]) -> str:
    lines = [f"every selected example of task {task!r} is refused for --purpose train by the terms guard:"]
    lines += [refusal_line(name, r) for name, r in refused.items()]
    lines.append("(--purpose eval is always allowed)")
    return "\n".join(lines)


def refusal_line(name: str, r: dict[str, Any]) -> str:
    where = f" ({r['source']}, {r['date']})" if r.get("source") else ""
    return (
        f"  - provider {name!r}: {r['count']} example(s) refused under terms profile {r['terms']!r} "
        f"[{r['category']}]: {r['reason']}. Clause: {r['clause']}{where}"
    )


# -- examples, dedup, split ------------------------------------------------------------------
def make_examples(
    rows: list[dict[str, Any]],
    messages: dict[str, list[dict[str, Any]]],
    template: Template,
    profiles: dict[str, TermsProfile],
) -> list[dict[str, Any]]:
    """One example per row; each records its terms profile and that profile's category at build time, which
    `insource distill` checks again (a hand-edited manifest cannot launder eval-only data into training)."""
    examples = []
    for r in rows:
        msgs = messages[r["id"]]
        examples.append(
            {
                "id": r["id"],
                "ts": r["ts"],
                "input": template.extract(msgs),
                "output": answer_key(str(r["output"])),
                "messages": msgs,
                "teacher_cost_usd": r["cost_usd"],
                "provider": r["provider"],
                "upstream_model": r["upstream_model"],
                "terms": r["terms"],
                "terms_category": resolve(profiles, r["terms"]).category,
                "tenant": r["tenant"],
                "_version": r["upstream_version"],
                "_redactors": orjson.loads(r["redactors"]),
                "_redactions": orjson.loads(r["redactions"]),
            }
        )
    return examples


def dedup(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Keep the earliest of each exact (input, output) pair, then of each normalised input."""
    exact_seen: set[tuple[str, str]] = set()
    near_seen: set[str] = set()
    kept, exact, near = [], 0, 0
    for ex in sorted(examples, key=lambda e: (e["ts"], e["id"])):
        key = (ex["input"], ex["output"])
        if key in exact_seen:
            exact += 1
            continue
        exact_seen.add(key)
        norm = normalise(ex["input"])
        if norm in near_seen:
            near += 1
            continue
        near_seen.add(norm)
        kept.append(ex)
    return kept, {"exact": exact, "near": near}


def split_examples(examples: list[dict[str, Any]], mode: SplitMode, seed: int) -> dict[str, list[dict[str, Any]]]:
    """80/10/10. Time mode: by time, with ties kept together so test is strictly later than train."""
    ordered = sorted(examples, key=lambda e: (e["ts"], e["id"]))
    n = len(ordered)
    n_hold = max(1, round(n * 0.1)) if n >= 3 else 0
    b1, b2 = n - 2 * n_hold, n - n_hold
    if mode == "random":
        shuffled = ordered[:]
        random.Random(seed).shuffle(shuffled)
        parts = (shuffled[:b1], shuffled[b1:b2], shuffled[b2:])
        return {name: sorted(p, key=lambda e: (e["ts"], e["id"])) for name, p in zip(SPLITS, parts, strict=True)}
    ts = [e["ts"] for e in ordered]
    while 0 < b2 < n and ts[b2] == ts[b2 - 1]:
        b2 += 1
    while 0 < b1 < b2 and ts[b1] == ts[b1 - 1]:
        b1 -= 1
    return {"train": ordered[:b1], "val": ordered[b1:b2], "test": ordered[b2:]}


# -- summaries -------------------------------------------------------------------------------
def provider_summary(examples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ex in examples:
        p = out.setdefault(
            ex["provider"],
            {"count": 0, "terms": {}, "upstream_models": {}, "upstream_versions": {}, "teacher_cost_usd": 0.0},
        )
        p["count"] += 1
        for key, value in (("terms", ex["terms"]), ("upstream_models", ex["upstream_model"])):
            p[key][str(value)] = p[key].get(str(value), 0) + 1
        if ex["_version"]:
            p["upstream_versions"][ex["_version"]] = p["upstream_versions"].get(ex["_version"], 0) + 1
        p["teacher_cost_usd"] += ex["teacher_cost_usd"] or 0.0
    for p in out.values():
        p["teacher_cost_usd"] = round(p["teacher_cost_usd"], 8)
    return out


def terms_summary(examples: list[dict[str, Any]], profiles: dict[str, TermsProfile]) -> dict[str, dict[str, Any]]:
    counts = Counter(ex["terms"] for ex in examples)
    out = {}
    for name, count in sorted(counts.items()):
        prof = resolve(profiles, name)
        out[name] = {"count": count, **{k: v for k, v in prof.to_dict().items() if k != "name"}}
    return out


def redaction_summary(examples: list[dict[str, Any]]) -> dict[str, Any]:
    ran: Counter[str] = Counter()
    replaced: Counter[str] = Counter()
    unredacted = 0
    for ex in examples:
        if not ex["_redactors"]:
            unredacted += 1
        ran.update(ex["_redactors"])
        replaced.update(ex["_redactions"])
    return {"redactors_run": dict(ran), "replacements": dict(replaced), "unredacted_examples": unredacted}


# -- the build -------------------------------------------------------------------------------
def spool_path(cfg: Config) -> Path:
    """The folder where the gateway's writer spools records it could not save yet (as service/worker_state.py)."""
    return (cfg.sqlite_path() or cfg.resolve_path("insource.db")).parent / "spool"


def protected_paths(cfg: Config) -> list[Path]:
    """What `--out --force` must never replace: the config's folder, the SQLite store, the model registry and
    the writer's spool (records not yet saved)."""
    paths = [Path(cfg.base_dir), cfg.registry_path(), spool_path(cfg)]
    db = cfg.sqlite_path()
    return paths if db is None else [*paths, db]


def sealed_paths(cfg: Config) -> list[Path]:
    """Folders a dataset may not be written into either: the model registry and the spool."""
    return [cfg.registry_path(), spool_path(cfg)]


def decide_kind(answers: Counter[str], override: Kind | None) -> dict[str, Any]:
    """The dataset's kind: inferred from the task's answers (as `insource tasks`), unless --kind overrides it."""
    inferred, reason = kind_and_reason(answers)
    source = "--kind" if override else "inferred"
    return {"kind": override or inferred, "kind_inferred": inferred, "kind_reason": reason, "kind_source": source}


def build_dataset(store: Store, cfg: Config, opts: BuildOptions) -> BuildResult:
    """Build the dataset described by `opts`; raises NotReady/TermsRefused with a clear message."""
    protected, sealed = protected_paths(cfg), sealed_paths(cfg)
    check_out(opts.out, opts.force, protected, sealed)
    profiles = load_profiles(cfg)
    rows, skipped = select_rows(store, opts, opted_out_tenants(cfg))
    allowed, refused, warnings = apply_guard(rows, profiles, opts)  # warnings: shown by the caller
    if not allowed:
        record_audit(store, "dataset.refused", opts, {"refused": refused, "selected": len(rows), "skipped": skipped})
        raise TermsRefused(refusal_message(opts.task, refused), refused)
    messages = load_messages(store, allowed)
    template = infer_template([messages[r["id"]] for r in allowed])
    examples = make_examples(allowed, messages, template, profiles)
    feedback = None
    if opts.feedback is not None:
        examples, feedback = apply_feedback(store, opts.task, examples, opts.feedback)
        if not examples:
            why = f"task {opts.task!r}: every answer was scored negative"
            raise NotReady(f"--feedback {opts.feedback} left no example of {why}")
    kind = decide_kind(Counter(ex["output"] for ex in examples), opts.kind)
    dup = {"exact": 0, "near": 0}
    if opts.dedup:
        examples, dup = dedup(examples)
    splits = split_examples(examples, opts.split, opts.seed)
    manifest = _manifest(opts, examples, profiles, kind)
    manifest.update(
        counts={name: len(part) for name, part in splits.items()},
        selected=len(rows),
        skipped=skipped,
        opted_out_excluded=skipped.get("tenant_opted_out", 0),  # a count only: opted-out tenants are not named
        refused=refused,
        dedup=dup,
        template=template.to_dict(),
        warnings=warnings,
    )
    if feedback is not None:
        manifest["feedback"] = feedback
    write_dataset(opts.out, splits, manifest, fmt=opts.fmt, force=opts.force, protected=protected, sealed=sealed)
    detail = {k: manifest[k] for k in ("counts", "refused", "dedup", "carve_out", "format", "split", "kind")}
    detail["providers"] = {p: v["count"] for p, v in manifest["providers"].items()}
    detail["files"] = manifest["files"]
    detail["opted_out_excluded"] = manifest["opted_out_excluded"]
    record_audit(store, "dataset.build", opts, detail)
    result = BuildResult(opts.out, opts.task, manifest["counts"], refused, manifest["providers"], manifest)
    result.warnings = warnings
    return result


def _manifest(
    opts: BuildOptions, examples: list[dict[str, Any]], profiles: dict[str, TermsProfile], kind: dict[str, Any]
) -> dict[str, Any]:
    labels = sorted({ex["output"] for ex in examples}) if kind["kind"] == "classification" else []
    return {
        "task": opts.task,
        "purpose": opts.purpose,
        "training_allowed": opts.purpose == "train",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "providers": provider_summary(examples),
        "terms": terms_summary(examples, profiles),
        "terms_categories": dict(Counter(ex["terms_category"] for ex in examples)),
        "carve_out": _carve_out(examples, profiles, opts),
        "redaction": redaction_summary(examples),
        "split": opts.split,
        "seed": opts.seed if opts.split == "random" else None,
        "window": {"since": opts.since, "until": opts.until},
        "format": opts.fmt,
        **kind,
        "labels": labels,
    }


def _carve_out(examples: list[dict[str, Any]], profiles: dict[str, TermsProfile], opts: BuildOptions) -> dict[str, Any]:
    """Examples admitted only through --allow-internal (the logged internal-classifier carve-out)."""
    if opts.purpose != "train":
        return {}
    internal = Counter(ex["terms"] for ex in examples if resolve(profiles, ex["terms"]).category == "internal")
    if not internal:
        return {}
    log.warning(
        "terms carve-out: %d example(s) under internal-only terms (%s) admitted by --allow-internal; the model "
        "trained on them must stay an internal classifier/embedding, never offered to third parties",
        sum(internal.values()),
        ", ".join(sorted(internal)),
    )
    return {"allow_internal": True, "examples": dict(internal)}


def record_audit(store: Store, action: str, opts: BuildOptions, detail: dict[str, Any]) -> None:
    full = {
        **detail,
        "allow_internal": opts.allow_internal,
        "since": opts.since,
        "until": opts.until,
        "dedup_enabled": opts.dedup,
    }
    audit_queries.insert_audit(
        store,
        id=uuid.uuid4().hex,
        ts=time.time(),
        action=action,
        task=opts.task,
        purpose=opts.purpose,
        target=str(opts.out.resolve()),
        detail=orjson.dumps(full, option=orjson.OPT_NON_STR_KEYS).decode(),
    )
