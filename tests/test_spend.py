"""Spend and task reports over real usage records in SQLite: teacher audits are spend, not caller requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from insource.capture.inspect import list_tasks
from insource.cli import _register, app
from insource.service.spend import spend
from insource.store import Store

runner = CliRunner()
_register()


def _usage(i: int, endpoint: str, served_by: str, cost: float, avoided: float = 0.0) -> dict[str, Any]:
    return {
        "id": f"req-{i}",
        "ts": 1_700_000_000.0 + i,
        "tenant": "acme",
        "key_id": "key-1",
        "endpoint": endpoint,
        "model": "gpt-4o-mini",
        "served_by": served_by,
        "task": "intent",
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "cost_usd": cost,
        "cost_avoided_usd": avoided,
    }


def _project(folder: Path) -> tuple[Path, Store]:
    """Four student answers (two of them audited by the teacher) and one teacher answer."""
    config = folder / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///insource.db"\n')
    store = Store(folder / "insource.db")
    rows = [_usage(i, "chat", "intent@v1", 0.0001, 0.002) for i in range(4)]
    rows += [_usage(4, "chat", "teacher:gpt-4o-mini", 0.002)]
    rows += [_usage(5 + i, "audit", "teacher:gpt-4o-mini", 0.002) for i in range(2)]
    store.write_batch([("usage", row, False) for row in rows])
    return config, store


def test_audits_are_spend_but_not_requests(tmp_path: Path) -> None:
    config, store = _project(tmp_path)
    (row,) = spend(store, "tenant")
    assert (row["requests"], row["audits"]) == (5, 2)
    assert abs(row["cost_usd"] - (4 * 0.0001 + 3 * 0.002)) < 1e-12  # the audits' cost is real spend
    assert abs(row["cost_avoided_usd"] - 4 * 0.002) < 1e-12
    by_server = {r["served_by"]: r for r in spend(store, "served_by")}
    assert (by_server["teacher:gpt-4o-mini"]["requests"], by_server["teacher:gpt-4o-mini"]["audits"]) == (1, 2)
    assert (by_server["intent@v1"]["requests"], by_server["intent@v1"]["audits"]) == (4, 0)
    assert [t["requests"] for t in list_tasks(store)] == [5]
    store.close()
    result = runner.invoke(app, ["spend", "--by", "task", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    (cli_row,) = json.loads(result.stdout)
    assert (cli_row["task"], cli_row["requests"], cli_row["audits"]) == ("intent", 5, 2)
    table = runner.invoke(app, ["spend", "--by", "task", "--config", str(config)])
    assert table.exit_code == 0 and "audits" in table.stdout
