"""Orchestrates the demo: teacher → gateway → traffic → dataset → student → eval → cascade → traffic → table."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from insource.capture.terms import load_profiles
from insource.config import load_config
from insource.demo import data as demo_data
from insource.demo import generative, report, tickets
from insource.demo.history import import_history
from insource.demo.steps import StepFailed, cli_json, start_gateway, stop_gateway
from insource.demo.workload import PhaseResult, send_phase
from insource.errors import ConfigError
from insource.service.keys import create_key, server_secret
from insource.store import open_store
from insource.text import literal

TASK = "support-intent"
FALLBACK_TARGETS = (0.97, 0.95)
WORTHWHILE_COVERAGE = 0.5  # of validation traffic, for the demo to settle on a target
DEMO_MARKER = "# Written by `insource demo`."  # the first line of its config: how a previous run is recognised


@dataclass
class DemoSettings:
    folder: Path
    quick: bool = False
    teacher_url: str | None = None
    teacher_key_env: str = "OPENAI_API_KEY"
    teacher_model: str = "gpt-4o-mini"
    teacher_terms: str = "openai"
    before: int = 3000
    after: int = 2000
    target_agreement: float = 0.98
    audit_rate: float = 0.05
    monthly_requests: int = 30_000_000
    seed: int = 7
    generative: bool = True  # also the support-ticket → JSON task, with a LoRA student (when installed)

    def __post_init__(self) -> None:
        if self.quick:
            self.before, self.after, self.audit_rate = min(self.before, 1500), min(self.after, 500), 0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What --teacher-model and --teacher-key-env may be: model names as providers spell them (gpt-4o-mini,
# meta-llama/Llama-3.1-8B-Instruct, llama3.1:8b, models/gemini-2.0-flash), environment variable names.
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,199}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_URL_RE = re.compile(r"https?://[^\s\x00-\x1f\x7f\"\\]+", re.IGNORECASE)


def _is_http_url(url: str) -> bool:
    try:
        return _URL_RE.fullmatch(url) is not None and bool(urllib.parse.urlsplit(url).hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def check_settings(s: DemoSettings) -> None:
    """Refuse a --teacher URL, model, key variable or terms profile that is not plainly one (exit code 2)."""
    if s.teacher_url is not None and not _is_http_url(s.teacher_url):
        raise ConfigError(f"--teacher must be an http:// or https:// base URL, got {s.teacher_url!r}")
    if not _MODEL_RE.fullmatch(s.teacher_model):
        raise ConfigError(f"--teacher-model must be a plain model name (like gpt-4o-mini), got {s.teacher_model!r}")
    if not _ENV_RE.fullmatch(s.teacher_key_env):
        raise ConfigError(f"--teacher-key-env must be an environment variable name, got {s.teacher_key_env!r}")
    profiles = load_profiles()
    if s.teacher_terms not in profiles:
        raise ConfigError(
            f"--teacher-terms must be a shipped terms profile ({', '.join(sorted(profiles))}), got {s.teacher_terms!r}"
        )


_TOML_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def toml_str(value: str) -> str:
    """`value` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in value:
        cp = ord(ch)
        if cp in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[cp])
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def write_config(s: DemoSettings, teacher_base: str) -> Path:
    """The demo's config; every value from the command line is checked, then written as a TOML string."""
    check_settings(s)
    simulated = s.teacher_url is None
    key_line = "" if simulated else f"api_key = {toml_str('env::' + s.teacher_key_env)}\n"
    terms = "self-hosted" if simulated else s.teacher_terms
    text = (
        f"{DEMO_MARKER} Inspect with: insource spend / models list / route show --config THIS\n"
        '[store]\nurl = "sqlite:///./insource.db"\n\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = {toml_str(teacher_base)}\n{key_line}'
        f"terms = {toml_str(terms)}\n"
        f"ttft_timeout_s = 30\ntotal_timeout_s = 120\n\n"
        f'[models."gpt-4o-mini"]\ntargets = [{toml_str("teacher:" + s.teacher_model)}]\n'
    )
    config = s.folder / "insource.toml"
    config.write_text(text)
    return config


@contextmanager
def simulated_teacher(s: DemoSettings, console: Console) -> Iterator[tuple[str, Any]]:
    if s.teacher_url is not None:
        url, model = escape(s.teacher_url), escape(s.teacher_model)
        console.print(f"Teacher: the real upstream at [bold]{url}[/] (model {model}).", highlight=False)
        yield s.teacher_url.rstrip("/"), None
        return
    from insource.demo.teacher import SimulatedTeacher
    from insource.testing.fake_upstream import FakeUpstream
    from insource.testing.server import run_server

    teacher = SimulatedTeacher(speed=0.1 if s.quick else 1.0, seed=s.seed)
    handle = run_server(teacher.attach(FakeUpstream(seed=s.seed)))
    console.print(f"[yellow]Teacher:[/] {teacher.describe()}", highlight=False)
    try:
        yield handle.url + "/v1", teacher
    finally:
        handle.stop()


def _phase(
    console: Console,
    title: str,
    base_url: str,
    key: str,
    pairs: list[tuple[str, str]],
    task: str = TASK,
    build: Callable[[str], list[dict[str, Any]]] = demo_data.build_messages,
    **options: Any,
) -> PhaseResult:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(title, total=len(pairs))
        return asyncio.run(
            send_phase(title, base_url, key, task, pairs, build, lambda: progress.advance(bar), **options)
        )


def _learn_student(s: DemoSettings, config: Path, console: Console) -> tuple[str, dict[str, Any]]:
    data_dir = s.folder / "datasets" / f"{TASK}-{int(time.time())}"
    console.rule("Dataset: captured traffic → training data (terms guard on)")
    build = ["dataset", "build", "--task", TASK, "--out", str(data_dir), "--purpose", "train"]
    if s.teacher_url is not None:
        console.print("Internal-classifier carve-out: the student is an internal classifier, not a competing model.")
        build.append("--allow-internal")
    dataset = cli_json(config, *build)
    console.print(literal(f"dataset {dataset['out']}: {dataset['counts']}"))
    console.rule("Distill: a classifier student the company owns")
    distilled = cli_json(config, "distill", "--task", TASK, "--dataset", str(data_dir))
    model = str(distilled["model"])
    console.rule(f"Evaluate {model} against the teacher")
    evaluated = _evaluate_at_a_worthwhile_target(s, config, model, data_dir, console)
    report.print_eval(console, evaluated)
    return model, evaluated


def _evaluate_at_a_worthwhile_target(
    s: DemoSettings, config: Path, model: str, data_dir: Path, console: Console
) -> dict[str, Any]:
    """The highest target at which the student may answer a worthwhile share of validation traffic.

    The simulated teacher agrees with its own labels only ~97-98% of the time, so a 98% target can leave the
    student answering almost nothing; the demo then says so and tries the next lower target.
    """
    tried: list[dict[str, Any]] = []
    for target in (s.target_agreement, *FALLBACK_TARGETS):
        args = ["eval", "--task", TASK, "--model", model, "--dataset", str(data_dir)]
        evaluated = cli_json(config, *args, "--target-agreement", str(target), ok=(0, 3))  # 3: no threshold
        tried.append(evaluated)
        coverage = evaluated.get("val_coverage_at_threshold") or 0.0
        if evaluated.get("threshold") is not None and coverage >= WORTHWHILE_COVERAGE:
            return evaluated
        if target > min(FALLBACK_TARGETS):
            reason = (
                f"the student could answer only {coverage:.0%} of validation traffic there"
                if evaluated.get("threshold") is not None
                else "no threshold reaches it on validation with a safety margin"
            )
            console.print(f"At {target:.0%} agreement {reason} (the teacher itself is noisy); trying a lower target.")
    return max(tried, key=lambda e: e.get("val_coverage_at_threshold") or 0.0)


def _route(s: DemoSettings, config: Path, model: str, evaluated: dict[str, Any], console: Console) -> None:
    threshold = evaluated.get("threshold")
    if threshold is None:
        threshold = 1.01  # no threshold reaches the target: the teacher keeps answering everything
    console.rule("Route: cascade (the student answers when sure, the teacher otherwise)")
    cli_json(
        config,
        "route",
        "set",
        "--task",
        TASK,
        "--model",
        model,
        "--mode",
        "cascade",
        "--threshold",
        f"{min(float(threshold), 1.0):.6f}",
        "--audit-rate",
        str(s.audit_rate),
        "--floor",
        "0.9",
    )
    console.print(f"{TASK} → {escape(model)}, threshold {float(threshold):.3f}, audit rate {s.audit_rate:g}")
    time.sleep(1.2)  # every worker picks the route up within a second


DEMO_STATE = ("insource.db", "insource.db-wal", "insource.db-shm", "insource.toml", "gateway.log")
DEMO_FOLDERS = ("models", "datasets", "spool")


def _written_by_the_demo(config: Path) -> bool:
    try:
        with config.open("rb") as fh:
            return fh.readline().startswith(DEMO_MARKER.encode())
    except OSError:
        return False


def prepare_folder(folder: Path, console: Console) -> None:
    """A demo starts afresh: a previous run's store (its routes, spend, students) is replaced, nothing else.

    A folder holding insource state the demo did not write (a gateway's own config, store or registry) is
    refused, never replaced: `--dir` must be a new folder or a previous demo's.
    """
    if folder.exists() and not folder.is_dir():
        raise StepFailed(f"--dir {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    found = [name for name in (*DEMO_STATE, *DEMO_FOLDERS) if (folder / name).exists()]
    if found and not _written_by_the_demo(folder / "insource.toml"):
        raise StepFailed(
            f"--dir {folder} holds insource state the demo did not write ({', '.join(found)}): the demo replaces "
            "its folder's store, config and registry, so give it a new folder (or a previous demo's)"
        )
    if not (folder / "insource.db").exists():
        return
    console.print(literal(f"Replacing the previous demo run in {folder} (a demo starts from an empty store)."))
    for name in DEMO_STATE:
        (folder / name).unlink(missing_ok=True)
    for name in DEMO_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)


def _check_teacher_answered(s: DemoSettings, before: PhaseResult, log: Path) -> None:
    if before.ok == 0:
        where = s.teacher_url or "the simulated teacher"
        raise StepFailed(
            f"the teacher ({where}) answered none of {before.requests} requests; the gateway's log says why: {log}"
        )


@dataclass
class _Phases:
    """What the demo's traffic and training produced, for the summary."""

    model: str
    evaluated: dict[str, Any]
    spans: tuple[tuple[float, float], tuple[float, float]]
    before: PhaseResult
    after: PhaseResult
    learned: tuple[str, dict[str, Any]] | None = None  # the generative student and its evaluation
    tickets: tuple[PhaseResult, PhaseResult] | None = None


def _tickets(console: Console, title: str, base_url: str, key: str, n: int, seed: int) -> PhaseResult:
    pairs = tickets.generate(n, seed)
    return _phase(console, title, base_url, key, pairs, generative.TASK, tickets.build_messages,
                  concurrency=generative.CONCURRENCY, agree=generative.judge)  # fmt: skip


def _run_phases(
    s: DemoSettings, gen: generative.GenPlan | None, config: Path, store: Any, base_url: str, key: str, console: Console
) -> _Phases:
    also = f" and {gen.before} support tickets" if gen else ""
    console.rule(f"Gateway on {base_url}: {s.before} requests{also}, all answered by the rented teacher")
    t0 = time.time()
    before = _phase(console, "teacher traffic", base_url, key, demo_data.generate(s.before, s.seed))
    _check_teacher_answered(s, before, s.folder / "gateway.log")
    gen_before = _tickets(console, "teacher tickets", base_url, key, gen.before, s.seed) if gen else None
    t1 = time.time()
    report.wait_for_records(store, t0, t1, before.requests + (gen_before.requests if gen_before else 0))
    report.print_spend(console, store, t0, t1)
    model, evaluated = _learn_student(s, config, console)
    learned = generative.learn(config, s.folder, gen, console) if gen else None
    if learned is not None:
        generative.route(config, *learned, console)
    _route(s, config, model, evaluated, console)
    t2 = time.time()
    after_pairs = demo_data.generate(s.after, s.seed + 1 + secrets.randbelow(1000))
    after = _phase(console, "cascade traffic", base_url, key, after_pairs)
    gen_after = None
    if gen and learned is not None:
        gen_after = _tickets(console, "cascade tickets", base_url, key, gen.after, s.seed + 2 + secrets.randbelow(1000))
    t3 = time.time()
    report.wait_for_records(store, t2, t3, after.requests + (gen_after.requests if gen_after else 0))
    phases = _Phases(model, evaluated, ((t0, t1), (t2, t3)), before, after, learned)
    if gen_before is not None and gen_after is not None:
        phases.tickets = (gen_before, gen_after)
    return phases


def run_demo(s: DemoSettings, console: Console) -> dict[str, Any]:
    check_settings(s)  # before anything in --dir is replaced
    prepare_folder(s.folder, console)
    if s.teacher_url is not None and not os.environ.get(s.teacher_key_env):
        raise StepFailed(f"--teacher needs its API key in the environment variable {s.teacher_key_env}")
    started = time.time()
    gen = generative.plan(s.quick, s.generative, console)
    with simulated_teacher(s, console) as (teacher_base, teacher):
        config = write_config(s, teacher_base)
        cfg = load_config(config)
        store = open_store(cfg)
        key = create_key(store, server_secret(cfg, store), "demo-shop")["key"]
        past = import_history(cfg, store, s.folder)
        console.print(
            f"[yellow]History:[/] 90 days of a SYNTHETIC bill for {len(past['tenants'])} made-up tenants, imported "
            f"as `insource usage import` would ({past['file']}), so the forecast and provider pages have a past.",
            highlight=False,
        )
        port = _free_port()
        gateway = start_gateway(config, port, s.folder / "gateway.log")
        try:
            run = _run_phases(s, gen, config, store, f"http://127.0.0.1:{port}/v1", key, console)
        finally:
            stop_gateway(gateway)
        summary = report.summarise(store, cfg, TASK, *run.spans, run.before, run.after, teacher, s.monthly_requests)
        if gen is not None and run.learned is not None and run.tickets is not None:
            summary["generative"] = generative.summarise(store, cfg, run.learned, run.spans, run.tickets, gen)
    summary.update(
        {
            "model": run.model,
            "folder": str(s.folder),
            "seconds": round(time.time() - started, 1),
            "simulated_teacher": s.teacher_url is None,
            "eval": run.evaluated,
            "report": str(report.write_overview(cfg, store, s.folder / "report.html")),
            "history": past,
        }
    )
    report.print_final(console, summary, config)
    if "generative" in summary:
        generative.print_summary(console, summary["generative"])
    return summary
