"""Where the CLI finds its config and store: read commands never create an empty store (issue 10, item 5)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import free_port, run_cli
from typer.testing import CliRunner

from insource.cli import _register, app

_register()
runner = CliRunner()

READ_COMMANDS = [
    ["tasks"],
    ["tasks", "--json"],
    ["audit"],
    ["spend"],
    ["spend", "--by", "task", "--json"],
    ["keys", "list"],
    ["keys", "list", "--json"],
    ["keys", "revoke", "key_nope"],
    ["route", "show"],
    ["route", "show", "--json"],
    ["route", "set", "--task", "t", "--model", "t@v1", "--mode", "shadow"],
    ["models", "list"],
    ["models", "show", "t@v1"],
    ["capture", "show", "cap_1"],
    ["capture", "search", "--task", "t", "--contains", "x"],
    ["dataset", "build", "--task", "t", "--out", "ds"],
    ["distill", "--task", "t"],
    ["eval", "--task", "t", "--model", "t@v1"],
    ["route", "off", "--task", "t"],
    ["tasks", "assign", "--template", "tpl_1", "--task", "t"],
    ["opportunities"],
    ["revenue"],
    ["forecast"],
    ["savings"],
    ["makebuy", "--task", "t"],
    ["report", "--json"],
]


@pytest.fixture()
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("INSOURCE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: " ".join(a))
def test_read_commands_in_an_empty_folder_refuse_and_create_nothing(empty: Path, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "no insource config or store here" in message
    assert "$INSOURCE_CONFIG" in message and "./insource.toml" in message and "./insource.db" in message
    assert "Traceback" not in result.output
    assert list(empty.iterdir()) == []  # no insource.db, no models/, no spool


def test_the_real_cli_in_an_empty_folder(tmp_path: Path) -> None:
    env = {"INSOURCE_CONFIG": ""}  # set but empty counts as unset
    result = run_cli("spend", "--json", cwd=tmp_path, env=env, check=False)
    assert result.returncode == 2 and "no insource config or store here" in result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_setup_commands_may_start_from_nothing(empty: Path) -> None:
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--json"])
    assert created.exit_code == 0, created.output
    assert (empty / "insource.db").exists()
    # once a store exists here, the embedded defaults read it
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert listed.exit_code == 0 and [r["tenant"] for r in json.loads(listed.stdout)] == ["acme"]


def _home(folder: Path) -> Path:
    folder.mkdir()
    config = folder / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///./data/gw.db"\n')
    (folder / "data").mkdir()
    return config


def test_dot_insource_toml_is_found(empty: Path) -> None:
    _home(empty / "home")
    run_cli("keys", "create", "--tenant", "from-toml", cwd=empty / "home")
    assert (empty / "home" / "data" / "gw.db").exists() and not (empty / "home" / "insource.db").exists()
    listed = run_cli("keys", "list", "--json", cwd=empty / "home")
    assert [r["tenant"] for r in json.loads(listed.stdout)] == ["from-toml"]


def test_insource_config_env_is_found(empty: Path) -> None:
    config = _home(empty / "home")
    (empty / "elsewhere").mkdir()
    env = {"INSOURCE_CONFIG": str(config)}
    run_cli("keys", "create", "--tenant", "from-env", cwd=empty / "elsewhere", env=env)
    listed = run_cli("keys", "list", "--json", cwd=empty / "elsewhere", env=env)
    assert [r["tenant"] for r in json.loads(listed.stdout)] == ["from-env"]
    assert list((empty / "elsewhere").iterdir()) == []
    # an explicit --config wins over $INSOURCE_CONFIG
    other = _home(empty / "other")
    listed = run_cli("tasks", "--json", "--config", str(other), cwd=empty / "elsewhere", env=env)
    assert json.loads(listed.stdout) == []
    # a $INSOURCE_CONFIG that names a missing file is an error, not the embedded defaults
    gone = run_cli("spend", cwd=empty / "elsewhere", env={"INSOURCE_CONFIG": str(empty / "nope.toml")}, check=False)
    assert gone.returncode == 2 and "cannot read config" in gone.stderr and "nope.toml" in gone.stderr


def test_a_config_without_a_store_is_not_given_one(empty: Path) -> None:
    _home(empty / "home")
    (empty / "home" / "data").rmdir()
    for args in (["spend"], ["keys", "list"], ["route", "show"], ["tasks"], ["audit"], ["models", "list"]):
        result = run_cli(*args, "--json", cwd=empty / "home")  # found the config: nothing recorded yet
        assert json.loads(result.stdout) == [], args
    revoked = run_cli("keys", "revoke", "key_nope", cwd=empty / "home", check=False)
    assert revoked.returncode == 2 and "Traceback" not in revoked.stderr
    assert sorted(p.name for p in (empty / "home").iterdir()) == ["insource.toml"]


def test_version() -> None:
    result = run_cli("--version")
    assert result.stdout == f"insource {importlib.metadata.version('insource')}\n"


def test_serve_finds_dot_insource_toml_for_every_worker(empty: Path) -> None:

    home = empty / "home"
    _home(home)
    port = free_port()
    log = empty / "serve.log"  # what serve and its workers said, shown when it did not start
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "insource", "serve", "--port", str(port), "--workers", "2", "--log-level", "info"],
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                started = time.monotonic() < deadline and proc.poll() is None
                assert started, f"serve did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
    assert (home / "data" / "gw.db").exists() and not (home / "insource.db").exists()
