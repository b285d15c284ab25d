"""`insource revenue`: shares, HHI, growth, what-ifs and the extraction-risk signal on a constructed store with
hand-computed answers (real SQLite, the real CLI)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run_cli

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.config import load_config
from insource.store import Store, open_store

NOV = datetime(2026, 11, 10, tzinfo=UTC).timestamp()
OCT = datetime(2026, 10, 10, tzinfo=UTC).timestamp()


def usage(
    tenant: str, ts: float, cost: float, key: str = "k1", prompt: int = 100, completion: int = 10
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "ts": ts, "tenant": tenant, "key_id": key, "endpoint": "chat", "model": "m",
        "served_by": "p:m", "task": None, "status": 200, "prompt_tokens": prompt, "completion_tokens": completion,
        "cost_usd": cost,
    }  # fmt: skip


def capture(store: Store, row: dict[str, Any], text: str, **params: Any) -> None:
    raw = CaptureRaw(
        id=row["id"], ts=row["ts"], tenant=row["tenant"], key_id=row["key_id"], task=None, model="m",
        provider="p", upstream_model="m", served_by="p:m", terms="self-hosted", consent=True, redact=False,
        redactors=(), request={"model": "m", "messages": [{"role": "user", "content": text}], **params},
        output="ok", response=None, upstream_version="m", finish_reason="stop", status=200,
    )  # fmt: skip
    store.write_batch(process_capture(raw))


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    store = open_store(load_config(config))
    rows = [usage("a", NOV + i, 5.0) for i in range(10)]  # 50
    rows += [usage("b", NOV + i, 10.0) for i in range(3)]  # 30
    rows += [usage("c", NOV + i, 15.0) for i in range(1)]  # 15
    rows += [usage("d", NOV + i, 0.2, key=f"k{i % 6}", prompt=10, completion=200) for i in range(25)]  # 5
    rows += [usage("a", OCT + i, 12.5) for i in range(2)]  # 25 in October
    rows += [usage("d", OCT, 0.5)]
    store.insert_many("usage", rows)
    for r in rows:
        if r["tenant"] == "d" and r["ts"] >= NOV:
            capture(store, r, f"Topic {r['ts']}: explain step by step", n=4, logprobs=True, top_logprobs=5)
        else:
            capture(store, r, "Q: what is my balance?\nA:")
    store.close()
    return config


def revenue(config: Path, *args: str, check: bool = True) -> Any:
    result = run_cli("revenue", "--config", str(config), *args, check=check)
    return json.loads(result.stdout) if check else result


def test_shares_hhi_growth_major_customers_hand_computed(home: Path) -> None:
    report = revenue(home, "--month", "2026-11", "--json")
    assert set(report) == {
        "month", "total_usd", "tenants", "top1_share", "top5_share", "hhi", "concentration", "what_if",
    }  # fmt: skip
    assert report["month"] == "2026-11" and report["total_usd"] == pytest.approx(100.0)
    by = {t["tenant"]: t for t in report["tenants"]}
    assert [t["tenant"] for t in report["tenants"]] == ["a", "b", "c", "d"]
    assert {t: by[t]["share"] for t in by} == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05})
    assert report["hhi"] == pytest.approx(2500 + 900 + 225 + 25)  # 3,650 > 1,800
    assert report["concentration"] == "high"
    assert report["top1_share"] == pytest.approx(0.5) and report["top5_share"] == pytest.approx(1.0)
    assert {t: by[t]["major_customer"] for t in by} == {"a": True, "b": True, "c": True, "d": False}
    assert by["a"]["mom_growth"] == pytest.approx(1.0)  # 25 -> 50
    assert by["d"]["mom_growth"] == pytest.approx(9.0)  # 0.5 -> 5: +900%
    assert by["b"]["mom_growth"] is None  # no October revenue
    assert revenue(home, "--json")["month"] == "2026-11"  # default: the latest month with usage


def test_what_if_and_bad_input(home: Path) -> None:
    report = revenue(home, "--month", "2026-11", "--what-if", "a=-20", "--what-if", "d=+100", "--json")
    assert report["what_if"] == [
        {"tenant": "a", "change": -0.2, "total_usd": pytest.approx(90.0), "total_change_share": pytest.approx(-0.1)},
        {"tenant": "d", "change": 1.0, "total_usd": pytest.approx(105.0), "total_change_share": pytest.approx(0.05)},
    ]
    for bad, words in (("a=-150", "between -100 and +1000"), ("a=1001", "between"), ("zz=-5", "unknown tenant")):
        result = revenue(home, "--month", "2026-11", "--what-if", bad, "--json", check=False)
        assert result.returncode != 0 and words in result.stderr and "Traceback" not in result.stderr
    result = revenue(home, "--month", "2026-13", check=False)
    assert result.returncode != 0 and "YYYY-MM" in result.stderr


def test_concentration_readings(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n')
    store = open_store(load_config(config))
    store.insert_many("usage", [usage(f"t{i}", NOV + i, 1.0) for i in range(8)])  # 8 x 12.5%: HHI 1,250
    store.insert_many("usage", [usage(f"t{i}", OCT + i, 1.0) for i in range(20)])  # 20 x 5%: HHI 500
    store.close()
    nov = revenue(config, "--month", "2026-11", "--json")
    assert nov["hhi"] == pytest.approx(1250) and nov["concentration"] == "moderate"
    oct_ = revenue(config, "--month", "2026-10", "--json")
    assert oct_["hhi"] == pytest.approx(500) and oct_["concentration"] == "unconcentrated"
    assert not any(t["major_customer"] for t in oct_["tenants"])
    empty = revenue(config, "--month", "2025-01", "--json")
    assert empty["tenants"] == [] and empty["total_usd"] == 0 and empty["concentration"] == "unconcentrated"


def test_extraction_risk_signal_names_its_reasons(home: Path) -> None:
    by = {t["tenant"]: t["extraction_risk"] for t in revenue(home, "--month", "2026-11", "--json")["tenants"]}
    assert by["d"]["level"] == "high", by["d"]
    reasons = " | ".join(by["d"]["reasons"])
    for words in ("n > 1", "logprobs", "step-by-step", "longer than prompts", "API keys", "templates"):
        assert words in reasons, reasons
    for tenant in "abc":
        assert by[tenant]["level"] == "low" and by[tenant]["reasons"] == []
    assert all(0 <= r["score"] <= 1 for r in by.values())


def test_months_follow_the_reporting_timezone(tmp_path: Path) -> None:
    """A request at 23:30 UTC on 30 November is December's revenue in Berlin (UTC+1)."""
    config = tmp_path / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n[report]\ntimezone = "Europe/Berlin"\n')
    store = open_store(load_config(config))
    late = datetime(2026, 11, 30, 23, 30, tzinfo=UTC).timestamp()
    store.insert_many("usage", [usage("a", late, 2.0), usage("b", NOV, 1.0)])
    store.close()
    assert revenue(config, "--month", "2026-12", "--json")["tenants"][0]["tenant"] == "a"
    nov = revenue(config, "--month", "2026-11", "--json")
    assert [t["tenant"] for t in nov["tenants"]] == ["b"] and nov["total_usd"] == pytest.approx(1.0)
    assert revenue(config, "--json")["month"] == "2026-12"  # the latest local month with usage
