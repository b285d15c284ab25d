"""`insource usage import` and `insource spend --by A,B [--csv]` through the real CLI, with known answers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import openai
import pytest
from tests.conftest import Gateway, run_cli
from typer.testing import CliRunner

from insource.cli import _register, app
from insource.service.spend import MEASURES as SPEND_MEASURES
from insource.store import Store

runner = CliRunner()
_register()

HEADER = "date,tenant,model,task,requests,prompt_tokens,completion_tokens,cost_usd\n"
BILL = HEADER + (
    "2026-11-01,acme,gpt-4o-mini,intent,100,1000000,100000,\n"  # priced: 0.15 + 0.06 = 0.21
    "2026-11-01,acme,gpt-4o,,5,1000,100,0.5\n"
    "2026-11-02,globex,gpt-4o,summary,7,2000,300,1.25\n"
    "2026-11-02,globex,gpt-4o,summary,7,2000,300,1.25\n"  # the same line twice: two rows, both imported
)


def project(folder: Path, extra: str = "") -> Path:
    config = folder / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///insource.db"\n' + extra)
    return config


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def spend_json(config: Path, *args: str) -> list[dict[str, object]]:
    code, out = cli("spend", *args, "--json", "--config", str(config))
    assert code == 0, out
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def test_import_is_idempotent_priced_and_feeds_spend(tmp_path: Path) -> None:
    config = project(tmp_path)
    bill = tmp_path / "bill.csv"
    bill.write_text(BILL)
    code, out = cli("usage", "import", str(bill), "--format", "csv", "--json", "--config", str(config))
    assert code == 0, out
    assert json.loads(out) == {"imported": 4, "skipped": 0}
    code, out = cli("usage", "import", str(bill), "--format", "csv", "--json", "--config", str(config))
    assert json.loads(out) == {"imported": 0, "skipped": 4}
    bill.write_text(BILL + "2026-11-03,acme,gpt-4o,,1,10,10,0.01\n")  # one new line: only it is added
    code, out = cli("usage", "import", str(bill), "--format", "csv", "--json", "--config", str(config))
    assert json.loads(out) == {"imported": 1, "skipped": 4}
    days = {r["day"]: r for r in spend_json(config, "--by", "day")}
    assert days["2026-11-01"]["cost_usd"] == pytest.approx(0.21 + 0.5)
    assert days["2026-11-01"]["requests"] == 105 and days["2026-11-02"]["requests"] == 14
    assert days["2026-11-02"]["cost_usd"] == pytest.approx(2.5)
    tasks = {r["task"]: r["cost_usd"] for r in spend_json(config, "--by", "task", "--since", "2026-11-02")}
    assert tasks == {"summary": pytest.approx(2.5), None: pytest.approx(0.01)}
    store = Store(tmp_path / "insource.db")
    marked = store.query("SELECT imported, SUM(requests) AS n FROM usage_daily GROUP BY imported")
    assert marked == [{"imported": 1, "n": 120}]  # imported rows are marked as such
    assert store.query_one("SELECT priced FROM usage_imports WHERE model = 'gpt-4o-mini'") == {"priced": 1}


def test_a_malformed_line_names_file_line_and_column_and_imports_nothing(tmp_path: Path) -> None:
    config = project(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER + "2026-11-01,acme,gpt-4o,,5,1000,100,0.5\n"
        "2026-11-02,acme,gpt-4o,,five,1000,100,0.5\n"
        "\n"
        "2026-11-31,acme,gpt-4o,,5,1000,100,0.5\n"
        "2026-11-03,acme,no-such-model,,5,1000,100,\n"
        "2026-11-03,acme,gpt-4o,,5,1000,100,-1\n"
        "2026-11-03,acme\n"
        "2026-11-03,acme,gpt-4o,,²,1000,100,0.5\n"
    )
    code, out = cli("usage", "import", str(bad), "--format", "csv", "--config", str(config))
    assert code == 2 and "Traceback" not in out
    text = " ".join(out.split())
    for where in (
        "bad.csv:3:5 (requests)",
        "bad.csv:5:1 (date)",
        "bad.csv:6:8 (cost_usd)",
        "bad.csv:7:8",
        "bad.csv:8:",
    ):
        assert where in text, where
    assert "no-such-model" in text and "nothing imported" in text
    assert spend_json(config) == []  # not even the good first line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "bad.csv: the file is empty"),
        ("date,tenant,model,requests,prompt_tokens\n", "bad.csv:1: missing column(s) completion_tokens"),
        (HEADER.replace("task", "planet"), "bad.csv:1:4: unknown column 'planet'"),
        (HEADER + '2026-11-01,"acme,gpt-4o,,5,1000,100,0.5\n', "bad.csv:"),
    ],
)
def test_bad_files_are_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    config = project(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code, out = cli("usage", "import", str(bad), "--format", "csv", "--config", str(config))
    assert code == 2 and message in " ".join(out.split()), out
    code, out = cli("usage", "import", str(tmp_path / "missing.csv"), "--format", "csv", "--config", str(config))
    assert code == 2 and "missing.csv" in out


def test_task_optional_and_price_from_config(tmp_path: Path) -> None:
    config = project(
        tmp_path,
        '[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nterms = "self-hosted"\n'
        '[models.house]\ntargets = ["p:house"]\nprice = { input_per_mtok = 1.0, output_per_mtok = 2.0 }\n',
    )
    bill = tmp_path / "b.csv"
    bill.write_text(
        "tenant,date,model,requests,prompt_tokens,completion_tokens\nacme,2026-10-05,house,3,1000000,1000000\n"
    )
    code, out = cli("usage", "import", str(bill), "--format", "csv", "--json", "--config", str(config))
    assert code == 0, out
    (row,) = spend_json(config, "--by", "model,month")
    assert row["model"] == "house" and row["month"] == "2026-10" and row["cost_usd"] == pytest.approx(3.0)


def test_spend_by_pairs_and_csv(tmp_path: Path) -> None:
    config = project(tmp_path)
    bill = tmp_path / "bill.csv"
    bill.write_text(BILL)
    assert cli("usage", "import", str(bill), "--format", "csv", "--config", str(config))[0] == 0
    rows = spend_json(config, "--by", "tenant,day")
    assert [(r["tenant"], r["day"]) for r in rows] == [("acme", "2026-11-01"), ("globex", "2026-11-02")]
    assert {"tenant", "day", "requests", "refused", "audits", "cost_usd", "cost_avoided_usd"} <= set(rows[0])
    by_task_model = spend_json(config, "--by", "task,model", "--until", "2026-11-01")
    assert {(r["task"], r["model"]): r["requests"] for r in by_task_model} == {
        ("intent", "gpt-4o-mini"): 100,
        (None, "gpt-4o"): 5,
    }
    code, out = cli("spend", "--by", "model,week", "--csv", "--config", str(config))
    assert code == 0, out
    table = list(csv.DictReader(io.StringIO(out)))
    assert table[0].keys() >= {"model", "week", "requests", "cost_usd"}
    assert {(r["model"], r["week"]): float(r["cost_usd"]) for r in table} == {
        ("gpt-4o", "2026-10-26"): pytest.approx(0.5),  # 2026-11-01 is a Sunday: the week of Monday 10-26
        ("gpt-4o", "2026-11-02"): pytest.approx(2.5),
        ("gpt-4o-mini", "2026-10-26"): pytest.approx(0.21),
    }
    for bad in ("planet", "task,day,model", "day,day", ""):
        code, out = cli("spend", "--by", bad, "--config", str(config))
        assert code == 2 and "--by" in out, (bad, out)
    code, out = cli("spend", "--since", "yesterday-ish", "--config", str(config))
    assert code == 2 and "--since" in out
    code, out = cli("spend", "--by", "task,day", "--config", str(config))
    assert code == 0 and "intent" in out and "2026-11-01" in out
    hostile = tmp_path / "hostile.csv"
    hostile.write_text(HEADER + '2026-11-05,acme,gpt-4o,"=HYPERLINK(""http://x"")",1,1,1,0.1\n')
    assert cli("usage", "import", str(hostile), "--format", "csv", "--config", str(config))[0] == 0
    code, out = cli("spend", "--by", "task", "--csv", "--config", str(config))
    assert "'=HYPERLINK" in out  # a spreadsheet shows it as text, never runs it


def test_refused_requests_are_counted_apart(tmp_path: Path) -> None:
    config = project(tmp_path)
    store = Store(tmp_path / "insource.db")
    base = {"ts": 1_790_000_000.0, "tenant": "acme", "key_id": "k", "endpoint": "chat", "model": "gpt-4o-mini"}
    rows = [
        {**base, "id": "a", "served_by": "openai:gpt-4o-mini", "status": 200, "cost_usd": 0.01},
        {**base, "id": "b", "served_by": None, "status": 429, "attempts": 0},
        {**base, "id": "c", "served_by": None, "status": 400, "attempts": 0},
        {**base, "id": "d", "served_by": None, "status": 502, "attempts": 3},  # the upstream failed: not refused
    ]
    store.write_batch([("usage", r, False) for r in rows])
    (row,) = spend_json(config)
    assert (row["requests"], row["refused"]) == (2, 2)
    by_server = {r["served_by"]: (r["requests"], r["refused"]) for r in spend_json(config, "--by", "served_by")}
    assert by_server == {"openai:gpt-4o-mini": (1, 0), "insource": (1, 2)}  # no blank served_by


def test_remote_spend_by_pairs_until(gateway: Gateway) -> None:
    """`spend --url` asks a running gateway's admin API: the same rows as the local store, --by pairs and --until."""
    key = gateway.key(tenant="remote-pairs")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        metadata={"task": "pairs"},  # type: ignore[arg-type]
    )
    gateway.usage_rows("key_id=?", (key["id"],), wait_for=1)
    until = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    args = ("spend", "--by", "tenant,day", "--until", until, "--json")
    local = json.loads(gateway.cli(*args).stdout)
    remote = json.loads(run_cli(*args, "--url", gateway.url, env={"INSOURCE_ADMIN_KEY": "adm-1"}).stdout)
    assert remote == local
    assert any(r["tenant"] == "remote-pairs" and r["requests"] == 1 and len(r["day"]) == 10 for r in remote)
    past = json.loads(gateway.cli("spend", "--by", "tenant,day", "--until", "2000-01-01", "--json").stdout)
    assert past == []


def test_empty_spend_says_what_to_do(tmp_path: Path) -> None:
    config = project(tmp_path)
    Store(tmp_path / "insource.db").close()
    code, out = cli("spend", "--config", str(config))
    assert code == 0 and "no usage recorded" in out.lower() and "usage import" in " ".join(out.split())
    assert spend_json(config) == []
    code, out = cli("spend", "--csv", "--config", str(config))
    assert code == 0 and out.strip() == ",".join(["tenant", *SPEND_MEASURES])
