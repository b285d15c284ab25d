"""Issue 10 items 7 and 9: tables that fit 80 columns with no header word or number cut, --json and --csv on every
listing (CSV matching JSON), spend next to each key's budget, capture search that skips a shared system prompt,
and one line naming what is empty (and what to run next) instead of an empty table.

Every command runs through the real CLI (`python -m insource`, COLUMNS=80) on a real SQLite store holding long
names and big numbers."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from tests.conftest import Gateway, run_cli

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.cli.tables import Col, csv_value, fit_table
from insource.config import load_config
from insource.service.keys import create_key, server_secret
from insource.store import Store

TASK = "customer-support-intent-classification-enterprise-tier"
TENANT = "acme-international-holdings-enterprise-division"
SYSTEM = "You are the support assistant of Acme. Classify the refund request and answer with one label only."
BIG_TOKENS = 123_456_789
BIG_COST = 98_765.432109
BUDGET = 987_654_321.5
N_CAPTURES = 6


def _raw(i: int) -> CaptureRaw:
    return CaptureRaw(
        id=f"req-{i:04d}-0123456789abcdef",
        ts=time.time() - 100 + i,
        tenant=TENANT,
        key_id="",
        task=TASK,
        model="gpt-4o-mini",
        provider="openai-enterprise-eu-west",
        upstream_model="gpt-4o-mini-2024-07-18",
        served_by="openai-enterprise-eu-west:gpt-4o-mini",
        terms="self-hosted",
        consent=True,
        redact=True,
        redactors=("secrets",),
        request={
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"parcel {i} is late"}],
        },
        output="card_arrival" if i % 2 else "refund_not_showing_up",
        response=None,
        upstream_version="v1",
        finish_reason="stop",
        status=200,
        cost_usd=0.001,
    )


def _usage(raw: CaptureRaw, key_id: str) -> dict[str, Any]:
    return {
        "id": raw.id,
        "ts": raw.ts,
        "tenant": raw.tenant,
        "key_id": key_id,
        "model": raw.model,
        "served_by": raw.served_by,
        "task": raw.task,
        "status": 200,
        "endpoint": "chat.completions",
        "prompt_tokens": BIG_TOKENS,
        "cached_tokens": BIG_TOKENS // 3,
        "completion_tokens": BIG_TOKENS // 7,
        "cost_usd": BIG_COST / N_CAPTURES,
        "cost_avoided_usd": 0.0,
    }


def _seed_routes(store: Store) -> None:
    now = time.time()
    store.execute(
        "INSERT INTO routes (task, model, mode, percent, threshold, target_agreement, audit_rate, floor, active,"
        " updated_at) VALUES (?, ?, 'cascade', 0, 0.87654, 0.99, 0.05, 0.9, 1, ?)",
        (TASK, f"{TASK}@v12", now - 50),
    )
    store.write_batch(
        [("agreements", {"id": f"a{i}", "ts": now - 40 + i / 1000, "task": TASK, "model": f"{TASK}@v12",
                         "source": "audit", "agree": int(i % 50 != 0)}, False) for i in range(1500)]
        + [("route_events", {"id": "e1", "ts": now - 45, "task": TASK, "kind": "set", "detail": "{}"}, False)]
    )  # fmt: skip


def _seed_registry(root: Path) -> None:
    for version, files in ((11, {"weights.bin": 3}), (12, {"weights.bin": 3})):
        folder = root / f"{TASK}@v{version}"
        folder.mkdir(parents=True)
        info = {"name": folder.name, "task": TASK, "version": version, "student": "lora", "files": files}
        info["created_at"] = "2026-12-06T21:00:00+00:00"
        info["metrics"] = {"val_agreement": 0.987654}
        (folder / "model.json").write_text(json.dumps(info))
        if version == 12:
            (folder / "weights.bin").write_bytes(b"abc")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tables")
    config = folder / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///insource.db"\n')
    store = Store(folder / "insource.db")
    cfg = load_config(config)
    secret = server_secret(cfg, store)
    key = create_key(store, secret, TENANT, budget_usd=BUDGET, rpm=1_000_000, tpm=250_000_000, models=["gpt-4o-mini"])
    create_key(store, secret, "small")
    rows: list[tuple[str, dict[str, Any], bool]] = []
    for raw in map(_raw, range(N_CAPTURES)):
        rows += process_capture(raw)
        rows.append(("usage", _usage(raw, key["id"]), False))
    detail = {"counts": {"train": 1_234_567, "val": 234_567, "test": 34_567}}
    audit = {"id": "au1", "ts": time.time(), "action": "dataset.build", "task": TASK, "purpose": "train"}
    rows.append(("audit", {**audit, "target": str(folder / "datasets" / TASK), "detail": orjson.dumps(detail)}, False))
    store.write_batch(rows)
    _seed_routes(store)
    store.close()
    _seed_registry(folder / "models")
    return config


def cli(config: Path, *args: str, check: bool = True) -> Any:
    return run_cli(*args, "--config", str(config), env={"COLUMNS": "80"}, check=check)


def _header_words(cols: tuple[Col, ...] | list[Col]) -> set[str]:
    return {w for c in cols for h in (c.header, c.short or "") for w in h.split()}


def _check_table(out: str, cols: tuple[Col, ...] | list[Col], numbers: list[str]) -> None:
    """Fits 80 columns; every word above the header rule is a whole header word; every number is whole."""
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) <= {"─", " "} and line.strip())
    header = " ".join(lines[:rule]).split()
    known = _header_words(cols) | {"students"}  # models list has a title
    assert header and set(header) <= known, (set(header) - known, out)
    for number in numbers:
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", out), (number, out)


def _csv_matches_json(config: Path, *args: str) -> list[dict[str, Any]]:
    rows = json.loads(cli(config, *args, "--json").stdout)
    parsed = list(csv.DictReader(io.StringIO(cli(config, *args, "--csv").stdout)))
    assert rows and len(parsed) == len(rows)
    for want, got in zip(rows, parsed, strict=True):
        assert set(got) >= set(want)
        assert {k: got[k] for k in want} == {k: csv_value(v) for k, v in want.items()}
    return rows


# -- item 7: tables that fit ------------------------------------------------------------------------------------
def test_spend_fits_80_columns_with_whole_numbers(project: Path) -> None:
    from insource.cli.gateway import _spend_columns

    for by in ("tenant", "task", "key"):
        out = cli(project, "spend", "--by", by).stdout
        _check_table(out, _spend_columns(by), [str(N_CAPTURES), f"{BIG_COST:.6f}", str(BIG_TOKENS // 7 * 6)])
        assert "hidden at this width:" in out  # 8 columns of big numbers cannot all fit: named, not cut
    wide = run_cli("spend", "--config", str(project), env={"COLUMNS": "200"}).stdout
    assert "hidden at" not in wide and str(BIG_TOKENS * N_CAPTURES) in wide


def test_tasks_and_audit_fit_80_columns(project: Path) -> None:
    from insource.cli.data import AUDIT_COLUMNS, TASK_COLUMNS

    out = cli(project, "tasks").stdout
    _check_table(out, TASK_COLUMNS, [str(N_CAPTURES), f"{BIG_COST:.4f}", "2"])
    assert "classification" in out
    _check_table(cli(project, "audit").stdout, AUDIT_COLUMNS, ["1234567", "234567", "34567"])


def test_keys_list_fits_and_shows_spend_next_to_budget(project: Path) -> None:
    from insource.cli.gateway import KEY_COLUMNS

    rows = json.loads(cli(project, "keys", "list", "--json").stdout)
    big = next(r for r in rows if r["tenant"] == TENANT)
    assert big["budget_usd"] == BUDGET and big["spent_usd"] == pytest.approx(BIG_COST)
    assert next(r for r in rows if r["tenant"] == "small")["spent_usd"] == 0
    out = cli(project, "keys", "list").stdout
    _check_table(out, KEY_COLUMNS, [f"{BUDGET:.2f}", f"{BIG_COST:.6f}", big["id"]])
    assert "spent" in out


def test_capture_search_route_show_and_models_list_fit(project: Path) -> None:
    from insource.cli.data import SEARCH_COLUMNS
    from insource.cli.models import MODEL_COLUMNS
    from insource.cli.route import ROUTE_COLUMNS

    out = cli(project, "capture", "search", "--task", TASK, "--contains", "parcel").stdout
    _check_table(out, SEARCH_COLUMNS, ["req-0005-0123456789abcdef"])
    n = json.loads(cli(project, "route", "show", "--json").stdout)[0]["n"]
    _check_table(cli(project, "route", "show").stdout, ROUTE_COLUMNS, ["0.877", "0.980", str(n)])
    out = cli(project, "models", "list").stdout
    _check_table(out, MODEL_COLUMNS, ["0.9877", "2026-12-06 21:00"])
    assert "damaged" in out and "ok" in out


def test_every_listing_has_csv_matching_json(project: Path) -> None:
    assert len(_csv_matches_json(project, "spend", "--by", "task")) == 1
    assert _csv_matches_json(project, "tasks")[0]["task"] == TASK
    assert len(_csv_matches_json(project, "keys", "list")) == 2
    assert len(_csv_matches_json(project, "audit")) == 1
    assert len(_csv_matches_json(project, "capture", "search", "--task", TASK, "--contains", "late")) == N_CAPTURES
    assert _csv_matches_json(project, "route", "show")[0]["n"] >= 100
    assert len(_csv_matches_json(project, "models", "list")) == 2
    both = cli(project, "tasks", "--json", "--csv", check=False)
    assert both.returncode == 2 and "--json" in both.stderr and "Traceback" not in both.stderr


def test_fit_table_wraps_then_abbreviates_then_drops() -> None:
    cols = [Col("name"), Col("completion_tokens", "num", short="compl."), Col("other", "num", drop=1)]
    rows: list[list[Any]] = [["x" * 30, "1234567", "89"]]

    def render(width: int) -> str:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(fit_table(cols, rows, width=width))
        text = console.export_text()
        assert "1234567" in text and all(len(line) <= width for line in text.splitlines()), text
        return text

    assert "x" * 30 in render(80) and "completion_tokens" in render(80)  # fits: one line each
    assert "x" * 30 not in render(40) and "completion_tokens" in render(40) and "89" in render(40)  # wrapped
    assert "completion_tokens" not in render(30) and "compl." in render(30) and "89" in render(30)  # abbreviated
    narrow = render(20).replace("\n", " ")
    assert "compl." in narrow and "89" not in narrow and "hidden at this width: other" in " ".join(narrow.split())


def test_eval_and_distill_candidate_tables_fit_80_columns() -> None:
    """These two need a trained student through the CLI (tested in test_distill_auto / test_students_acceptance);
    here their tables are laid out at 80 columns from results shaped like the commands' JSON."""
    from insource.cli.models import CANDIDATE_COLUMNS, EVAL_COLUMNS, _candidates_table, _eval_table

    def render(table: Any) -> str:
        console = Console(width=80, record=True, file=io.StringIO())
        console.print(table)
        return console.export_text()

    model = f"{TASK}@v123"
    cands = [
        {"model": model, "student": "classifier-strong", "val_coverage_at_target": 0.912345,
         "val_agreement_at_threshold": 0.993456, "threshold": 0.876543},
        {"model": f"{TASK}@v122", "student": "classifier", "val_coverage_at_target": 0.8,
         "val_agreement_at_threshold": 0.990001, "threshold": 0.912345},
    ]  # fmt: skip
    out = render(_candidates_table({"model": model, "target_agreement": 0.99, "candidates": cands}, 80))
    _check_table(out.split("\n", 1)[1], CANDIDATE_COLUMNS, ["0.9123", "0.9935", "0.8765", "0.99"])
    assert "classifier-strong" in out  # the 59-character model names wrap: nothing can be left out
    result = {"model": model, "split": "test", "n": 123456, "agreement": 0.987654, "latency_ms_p50": 1234.56789}
    result |= {"answers_per_s_per_core": 98765.4321, "teacher_cost_per_1k_usd": 12345.678}
    out = render(_eval_table(result, 80))
    _check_table(out[out.index("metric") :], EVAL_COLUMNS, ["0.9877", "1235", "9.877e+04", "1.235e+04"])
    assert "answers_per_s_per_core" in out and "teacher_cost_per_1k_usd" in out


def test_keys_list_spent_matches_metered_usage_locally_and_remotely(gateway: Gateway, fake: Any) -> None:
    import openai

    key = gateway.key(tenant="spent-shown", budget_usd=5.0)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    metered = sum(r["cost_usd"] for r in gateway.usage_rows("key_id=?", (key["id"],), wait_for=3))
    assert metered > 0
    env = {"INSOURCE_ADMIN_KEY": "adm-1"}
    remote = run_cli("keys", "list", "--url", gateway.url, "--json", env=env)
    for listed in (gateway.cli("keys", "list", "--json"), remote):
        row = next(r for r in json.loads(listed.stdout) if r["id"] == key["id"])
        assert row["budget_usd"] == 5.0 and row["spent_usd"] == pytest.approx(metered)
    text = run_cli("keys", "list", "--config", str(gateway.config), env={"COLUMNS": "80"}).stdout
    assert "spent" in text.split("\n", 1)[0] and f"{metered:.6f}" in text


def test_demo_report_tables_fit_80_columns() -> None:
    from insource.demo import report

    console = Console(width=80, record=True, file=io.StringIO())
    phase = {"requests": 123_456, "failed": 0, "agreement": 0.991, "avoided_usd": 0.0}
    summary = {
        "before": {**phase, "insourced": 0, "cost_usd": 1234.5678},
        "after": {**phase, "insourced": 100_000, "cost_usd": 234.5678, "avoided_usd": 1000.1234},
        "monthly_requests": 1_000_000,
        "monthly_cost_before_usd": 1_234_567.0,
        "monthly_cost_after_usd": 234_567.0,
        "projected_monthly_savings_usd": 1_000_000.0,
        "audited_agreement": 0.99,
        "audits": 100,
        "rolled_back": False,
        "simulated_teacher": False,
        "folder": "demo",
    }
    report.print_final(console, summary, Path("insource.toml"))
    out = console.export_text()
    table = out[out.index("phase") : out.index("before: the teacher")]
    _check_table(table, report._FINAL_COLUMNS, ["$1234.5678", "$1000.1234", "$1,234,567", "$1,000,000", "123456"])


def test_csv_never_sends_escape_sequences_to_the_terminal(tmp_path: Path) -> None:
    from tests.test_cli_safety import HOSTILE_TASKS, _project, _raw

    config = _project(tmp_path / "p", [_raw(i, task) for i, task in enumerate(HOSTILE_TASKS)])
    for args in (("tasks",), ("spend", "--by", "task")):
        out = cli(config, *args, "--csv").stdout
        assert "\x1b" not in out and "esc\\x1b[31mRED" in out
        tasks = {row.get("task") for row in csv.DictReader(io.StringIO(out))}
        assert "nl\nfake" in tasks and "[/]" in tasks  # a newline is kept (quoted), markup is plain text


# -- item 9: capture search looks where the user's text is --------------------------------------------------------
def test_capture_search_skips_the_shared_system_prompt_by_default(project: Path) -> None:
    def ids(*args: str) -> list[str]:
        return [r["id"] for r in json.loads(cli(project, "capture", "search", "--task", TASK, *args, "--json").stdout)]

    assert ids("--contains", "support assistant") == []
    assert len(ids("--contains", "support assistant", "--in", "system")) == N_CAPTURES
    assert len(ids("--contains", "support assistant", "--in", "all")) == N_CAPTURES
    assert ids("--contains", "parcel 3") == ["req-0003-0123456789abcdef"]
    assert ids("--contains", "parcel 3", "--in", "answer") == []
    assert len(ids("--contains", "CARD_arrival")) == N_CAPTURES // 2
    assert ids("--contains", "card_arrival", "--in", "user") == []
    out = cli(project, "capture", "search", "--task", TASK, "--contains", "support assistant").stdout
    assert out.count("\n") == 1 and "No capture" in out and "--in all" in out
    bad = cli(project, "capture", "search", "--task", TASK, "--contains", "x", "--in", "nowhere", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


# -- item 9: empty listings say what is empty and what to run next ---------------------------------------------------
@pytest.mark.parametrize(
    ("args", "says", "next_step"),
    [
        (("keys", "list"), "No keys", "insource keys create --tenant"),
        (("spend",), "No usage", "insource serve"),
        (("tasks",), "No tasks", "insource serve"),
        (("audit",), "No dataset exports", "insource dataset build"),
        (("route", "show"), "No routes", "insource route set"),
        (("models", "list"), "No students", "insource distill"),
    ],
)
def test_empty_listings_print_one_line_and_the_next_step(
    tmp_path: Path, args: tuple[str, ...], says: str, next_step: str
) -> None:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///insource.db"\n')
    Store(tmp_path / "insource.db").close()
    result = cli(config, *args)
    assert result.stdout.count("\n") == 1 and says in result.stdout and next_step in result.stdout, result.stdout
    assert json.loads(cli(config, *args, "--json").stdout) == []
