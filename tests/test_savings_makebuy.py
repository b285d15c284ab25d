"""Savings (avoided − student − audits) and make-or-buy on constructed stores with hand-computed answers, through
the real CLI; the exact JSON shapes; and the bad input: empty store, unknown task, options that do not fit."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from insource.analytics.makebuy import Cpu, Gpu, break_even, make_or_buy
from insource.cli import _register, app
from insource.store import Store

runner = CliRunner()
_register()

DAY = 86400.0
FIGURES = {
    "requests",
    "insourced",
    "share_insourced",
    "teacher_cost_avoided_usd",
    "student_cost_usd",
    "audit_cost_usd",
    "net_savings_usd",
}
MAKEBUY_KEYS = {
    "task",
    "monthly_requests",
    "monthly_api_usd",
    "inhouse_monthly_usd",
    "monthly_savings_usd",
    "break_even_requests_per_month",
    "payback_days",
}


def earlier_today() -> float:
    """A moment in the past that is still today (UTC): an hour ago, or just after midnight in the day's first hour
    (a record from "an hour ago" at 00:30 would be yesterday's, and a young task would look two days old)."""
    now = time.time()
    midnight = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return max(now - 3600, min(midnight + 1, now))


def _usage(n: int, task: str | None, served_by: str | None, cost: float, **extra: Any) -> dict[str, Any]:
    row = {
        "id": f"r{n}",
        "ts": extra.pop("ts", earlier_today()),
        "tenant": "acme",
        "key_id": "key-1",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "served_by": served_by,
        "task": task,
        "status": 200,
        "cost_usd": cost,
    }
    return row | extra


def _config(folder: Path, extra: str = "") -> Path:
    config = folder / "insource.toml"
    config.write_text(f'[store]\nurl = "sqlite:///insource.db"\n{extra}')
    return config


def _invoke(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


# -- savings ---------------------------------------------------------------------------------
def _savings_store(folder: Path) -> Path:
    """intent: 4 student answers (avoided $0.002, CPU $0.0001 each), 2 audits ($0.002 each), 1 teacher answer
    ($0.002), 1 refused request, 1 that every upstream failed, and an imported bill line (100 requests, not
    gateway traffic); topic: 3 teacher answers ($0.001); and 2 untagged requests ($0.5)."""
    config = _config(folder)
    store = Store(folder / "insource.db")
    n = iter(range(100))
    rows = [_usage(next(n), "intent", "intent@v1", 0.0001, cost_avoided_usd=0.002) for _ in range(4)]
    rows += [_usage(next(n), "intent", "openai:gpt-4o-mini", 0.002, endpoint="audit") for _ in range(2)]
    rows += [_usage(next(n), "intent", "openai:gpt-4o-mini", 0.002)]
    rows += [_usage(next(n), "intent", None, 0.0, status=429, error_code="rate_limited", attempts=0)]  # refused
    rows += [_usage(next(n), "intent", None, 0.0, status=502, error_code="upstream_error", attempts=3)]  # failed
    rows += [_usage(next(n), "topic", "openai:gpt-4o-mini", 0.001) for _ in range(3)]
    rows += [_usage(next(n), None, "openai:gpt-4o-mini", 0.5) for _ in range(2)]
    store.write_batch([("usage", row, False) for row in rows])
    store.write_batch([("usage_imports", _imported("intent"), False)])
    store.close()
    return config


def _imported(task: str) -> dict[str, Any]:
    """A line of an imported bill: history from before the gateway."""
    return {
        "id": "imp-1",
        "day": "2026-01-05",
        "tenant": "acme",
        "model": "gpt-4o-mini",
        "task": task,
        "requests": 100,
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cost_usd": 1.0,
        "priced": 0,
        "source": "bill.csv",
        "line": 2,
        "imported_at": 0.0,
    }


def test_savings_are_avoided_minus_student_minus_audits(tmp_path: Path) -> None:
    config = _savings_store(tmp_path)
    out = json.loads(_invoke("savings", "--json", "--config", str(config)).stdout)
    assert set(out) == {"rows", "total"}
    assert all(set(row) == FIGURES | {"task"} for row in out["rows"]) and set(out["total"]) == FIGURES
    rows = {row["task"]: row for row in out["rows"]}
    assert list(rows) == ["intent", "topic"]  # largest net savings first; untagged traffic left out
    intent = rows["intent"]
    assert (intent["requests"], intent["insourced"]) == (6, 4)  # audits and the refused request are not requests
    assert intent["share_insourced"] == pytest.approx(4 / 6)  # nobody answered the failed one: not insourced
    assert intent["teacher_cost_avoided_usd"] == pytest.approx(0.008)
    assert intent["student_cost_usd"] == pytest.approx(0.0004)
    assert intent["audit_cost_usd"] == pytest.approx(0.004)
    assert intent["net_savings_usd"] == pytest.approx(0.008 - 0.0004 - 0.004)
    topic = rows["topic"]
    assert (topic["requests"], topic["insourced"], topic["share_insourced"], topic["net_savings_usd"]) == (3, 0, 0, 0)
    total = out["total"]
    assert (total["requests"], total["insourced"]) == (9, 4)
    assert total["share_insourced"] == pytest.approx(4 / 9)
    assert total["net_savings_usd"] == pytest.approx(0.0036)
    table = _invoke("savings", "--config", str(config)).stdout
    assert "intent" in table and "total" in table and "66.7%" in table


def test_savings_by_day_sum_to_the_same_total(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = Store(tmp_path / "insource.db")
    day1 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp()
    rows = [_usage(0, "intent", "intent@v1", 0.001, cost_avoided_usd=0.01, ts=day1)]
    rows += [_usage(1, "intent", "intent@v1", 0.001, cost_avoided_usd=0.01, ts=day1 + DAY)]
    rows += [_usage(2, "intent", "openai:gpt-4o-mini", 0.003, endpoint="audit", ts=day1 + DAY)]
    rows += [_usage(3, "other", "openai:gpt-4o-mini", 0.01, ts=day1 + DAY)]
    store.write_batch([("usage", row, False) for row in rows])
    store.close()
    by_day = json.loads(_invoke("savings", "--by", "day", "--json", "--config", str(config)).stdout)
    assert [(r["day"], r["requests"], r["net_savings_usd"]) for r in by_day["rows"]] == [
        ("2026-03-01", 1, pytest.approx(0.009)),
        ("2026-03-02", 2, pytest.approx(0.006)),
    ]
    by_task = json.loads(_invoke("savings", "--json", "--config", str(config)).stdout)
    assert by_day["total"] == by_task["total"]
    assert by_task["total"]["net_savings_usd"] == pytest.approx(0.015)


def test_savings_on_an_empty_store_say_what_to_do(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = _invoke("savings", "--json", "--config", str(config))
    out = json.loads(result.stdout)
    assert out["rows"] == [] and out["total"]["requests"] == 0 and out["total"]["net_savings_usd"] == 0.0
    assert "no usage recorded yet" in result.stderr
    assert "insource serve" in _invoke("savings", "--config", str(config)).stdout
    bad = _invoke("savings", "--by", "tenant", "--config", str(config), code=2)
    assert "--by must be task or day" in bad.output


# -- make or buy: the arithmetic ---------------------------------------------------------------
def test_make_or_buy_by_hand_cpu() -> None:
    # 600 requests a month at $0.003; a student answering in 5 ms of CPU at $0.36 an hour; $0.36 of training.
    cpu = Cpu(seconds_per_request=0.005, usd_per_hour=0.36)
    assert cpu.usd_per_request() == pytest.approx(5e-7)
    out = make_or_buy("intent", 600, 0.003, cpu, training_usd=0.36)
    assert set(out) == MAKEBUY_KEYS
    assert out["monthly_api_usd"] == pytest.approx(1.8)
    assert out["inhouse_monthly_usd"] == pytest.approx(0.0003)
    assert out["monthly_savings_usd"] == pytest.approx(1.7997)
    assert out["break_even_requests_per_month"] == 0  # no fixed cost: cheaper from the first request
    assert out["payback_days"] == pytest.approx(0.36 / (1.7997 / 30), abs=0.01)  # 6.0 days


def test_make_or_buy_by_hand_gpu() -> None:
    # A $1/h GPU serving 10 requests/s at 50% utilisation: $1 / 18,000 requests; at least 720 hours a month.
    gpu = Gpu(usd_per_hour=1.0, throughput_rps=10.0, utilisation=0.5)
    out = make_or_buy("intent", 1_000_000, 0.003, gpu, training_usd=100.0)
    assert out["monthly_api_usd"] == pytest.approx(3000.0)
    assert out["inhouse_monthly_usd"] == pytest.approx(720.0)  # 55.6 GPU-hours of work, one GPU all month
    assert out["monthly_savings_usd"] == pytest.approx(2280.0)
    assert out["break_even_requests_per_month"] == pytest.approx(240_000.0)  # $720 / $0.003
    assert out["payback_days"] == pytest.approx(100 / (2280 / 30), abs=0.01)  # 1.32 days
    busy = make_or_buy("intent", 36_000_000, 0.003, gpu, training_usd=0.0)  # 2,000 GPU-hours of work
    assert busy["inhouse_monthly_usd"] == pytest.approx(2000.0)
    small = make_or_buy("intent", 1000, 0.003, gpu, training_usd=100.0)
    assert small["monthly_savings_usd"] == pytest.approx(3.0 - 720.0) and small["payback_days"] is None
    assert break_even(1e-5, gpu) is None  # the API is cheaper than even a busy GPU: never
    assert break_even(0.0, gpu) is None


# -- make or buy: through the CLI on a constructed store --------------------------------------
def _student(registry: Path, name: str, answers_per_s: float | None, train_seconds: float) -> None:
    folder = registry / name
    folder.mkdir(parents=True)
    task, _, version = name.partition("@v")
    (folder / "head.npz").write_bytes(b"weights")
    info = {"name": name, "task": task, "version": int(version), "student": "classifier", "labels": ["a", "b"]}
    info |= {"files": {"head.npz": 7}, "metrics": {"train_seconds": train_seconds}}
    (folder / "model.json").write_text(json.dumps(info))
    if answers_per_s is not None:
        (folder / "eval.json").write_text(json.dumps({"latest": {"answers_per_s_per_core": answers_per_s}}))


def _makebuy_store(folder: Path, *, answers_per_s: float | None = 200.0) -> Path:
    """Over the last 30 days of intent: 400 teacher answers at $0.003 and 200 student answers (avoiding
    $0.003 each); its student intent@v1 answers 200 a second (5 ms) and trained for an hour; CPU $0.36/h."""
    config = _config(folder, '\n[inhouse]\ncpu_usd_per_hour = 0.36\n\n[registry]\npath = "models"\n')
    _student(folder / "models", "intent@v1", answers_per_s, train_seconds=3600)
    store = Store(folder / "insource.db")
    start = time.time() - 29 * DAY  # the 30th day back, counting today
    rows = [_usage(i, "intent", "openai:gpt-4o-mini", 0.003, ts=start + i * 4000) for i in range(400)]
    rows += [
        _usage(400 + i, "intent", "intent@v1", 0.0000005, cost_avoided_usd=0.003, ts=start + i * 8000)
        for i in range(200)
    ]
    rows += [_usage(700 + i, "intent", "openai:gpt-4o-mini", 0.003, endpoint="audit") for i in range(5)]
    rows += [_usage(800, "summary", "openai:gpt-4o", 0.02)]
    rows += [_usage(801, "intent", "openai:gpt-4o-mini", 9.0, ts=start - 3 * DAY)]  # older than 30 days
    store.write_batch([("usage", row, False) for row in rows])
    store.close()
    return config


def test_makebuy_cpu_student_by_hand(tmp_path: Path) -> None:
    config = _makebuy_store(tmp_path)
    out = json.loads(_invoke("makebuy", "--task", "intent", "--json", "--config", str(config)).stdout)
    assert set(out) == MAKEBUY_KEYS and out["task"] == "intent"
    assert out["monthly_requests"] == 600  # 600 answered in 30 days; audits are not requests
    assert out["monthly_api_usd"] == pytest.approx(1.8)
    assert out["inhouse_monthly_usd"] == pytest.approx(0.0003)  # 600 × 5 ms × $0.36/h
    assert out["monthly_savings_usd"] == pytest.approx(1.7997)
    assert out["break_even_requests_per_month"] == 0
    assert out["payback_days"] == pytest.approx(6.0, abs=0.01)  # $0.36 of training / ($1.7997 / 30) a day
    table = _invoke("makebuy", "--task", "intent", "--config", str(config)).stdout
    assert "monthly_savings_usd" in table


def test_makebuy_gpu_options_by_hand(tmp_path: Path) -> None:
    config = _makebuy_store(tmp_path)
    args = ["--gpu-usd-per-hour", "0.01", "--throughput-rps", "1", "--utilisation", "0.5", "--training-usd", "1"]
    out = json.loads(_invoke("makebuy", "--task", "intent", *args, "--json", "--config", str(config)).stdout)
    assert out["inhouse_monthly_usd"] == pytest.approx(7.2)  # one GPU all month: 720 h × $0.01
    assert out["monthly_savings_usd"] == pytest.approx(1.8 - 7.2)
    assert out["break_even_requests_per_month"] == pytest.approx(2400.0)  # $7.2 / $0.003
    assert out["payback_days"] is None


def test_makebuy_falls_back_to_the_gateways_measured_cost(tmp_path: Path) -> None:
    """Without an evaluation, the CPU time the gateway charged for the student's answers prices it."""
    config = _makebuy_store(tmp_path, answers_per_s=None)
    out = json.loads(_invoke("makebuy", "--task", "intent", "--json", "--config", str(config)).stdout)
    assert out["inhouse_monthly_usd"] == pytest.approx(0.0003)


def test_makebuy_young_task_is_scaled_to_a_month(tmp_path: Path) -> None:
    config = _config(tmp_path, '\n[inhouse]\ncpu_usd_per_hour = 0.36\n\n[registry]\npath = "models"\n')
    _student(tmp_path / "models", "intent@v1", 200.0, train_seconds=0)
    store = Store(tmp_path / "insource.db")
    store.write_batch([("usage", _usage(i, "intent", "openai:gpt-4o-mini", 0.001), False) for i in range(10)])
    store.close()
    out = json.loads(_invoke("makebuy", "--task", "intent", "--json", "--config", str(config)).stdout)
    assert out["monthly_requests"] == 300  # 10 today: 10 a day for 30 days
    assert out["payback_days"] == 0


def test_makebuy_bad_input(tmp_path: Path) -> None:
    config = _config(tmp_path)
    empty = _invoke("makebuy", "--task", "intent", "--config", str(config), code=2)
    assert "unknown task 'intent'" in empty.output and "no usage recorded yet" in empty.output
    (tmp_path / "p").mkdir()
    config = _makebuy_store(tmp_path / "p")
    unknown = _invoke("makebuy", "--task", "nope", "--config", str(config), code=2)
    assert "unknown task 'nope'" in unknown.output and "intent, summary" in unknown.output
    no_student = _invoke("makebuy", "--task", "summary", "--config", str(config), code=2)
    assert "no measured latency" in no_student.output and "--gpu-usd-per-hour" in no_student.output
    gpu = ["--gpu-usd-per-hour", "2", "--throughput-rps", "5"]
    ok = json.loads(_invoke("makebuy", "--task", "summary", *gpu, "--json", "--config", str(config)).stdout)
    assert ok["monthly_api_usd"] == pytest.approx(0.02 * 30) and ok["payback_days"] is None
    half = _invoke("makebuy", "--task", "intent", "--gpu-usd-per-hour", "2", "--config", str(config), code=2)
    assert "go together" in half.output
    for opts in (
        ["--utilisation", "0"],
        ["--utilisation", "1.5"],
        ["--throughput-rps", "0", "--gpu-usd-per-hour", "1"],
    ):
        bad = _invoke("makebuy", "--task", "intent", *opts, "--config", str(config), code=2)
        assert "Traceback" not in bad.output
    assert (
        "Traceback"
        not in _invoke("makebuy", "--task", "intent", "--utilisation", "nan", "--config", str(config), code=2).output
    )
