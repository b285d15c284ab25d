"""CLI safety from a security audit: stored text shown literally (no Rich markup, no terminal escapes), --url never
follows redirects with the admin key, numeric and date options bounded, dataset --out never takes a protected
folder, and the demo's generated TOML cannot be injected from the command line."""

from __future__ import annotations

import http.server
import io
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from insource.capture.process import process_capture
from insource.capture.record import CaptureRaw
from insource.cli import _register, app, common
from insource.config import load_config
from insource.errors import ConfigError
from insource.service.keys import create_key, server_secret
from insource.store import Store

runner = CliRunner()
_register()

ESC = "\x1b"
HOSTILE_TASKS = ["[/]", "evil[/bold]", "[link=http://evil.example]click[/link]", "esc\x1b[31mRED\x1b[0m", "nl\nfake"]
HOSTILE_TEXT = "[/] close [bold]x \x1b]52;c;ZXZpbA==\x07 \x1b[2J"


@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    """Tables at 400 columns, so that assertions see whole cells."""
    saved = common.console._width, common.err_console._width
    common.console._width = common.err_console._width = 400
    yield
    common.console._width, common.err_console._width = saved


def _raw(i: int, task: str, *, tenant: str = "acme", model: str = "gpt-4o-mini", text: str = "hello") -> CaptureRaw:
    return CaptureRaw(
        id=f"req-{i:04d}",
        ts=1_700_000_000.0 + i,
        tenant=tenant,
        key_id="key-1",
        task=task,
        model=model,
        provider="local",
        upstream_model="llama-3-8b",
        served_by="local:llama-3-8b",
        terms="self-hosted",
        consent=True,
        redact=True,
        redactors=("secrets",),
        request={"model": model, "messages": [{"role": "user", "content": text}]},
        output=f"answer {i % 3} {HOSTILE_TEXT}",
        response=None,
        upstream_version="v1",
        finish_reason="stop",
        status=200,
        cost_usd=0.001,
    )


def _project(folder: Path, raws: list[CaptureRaw]) -> Path:
    """A config + SQLite store holding `raws`, captured and metered; returns the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "insource.toml"
    config.write_text('[store]\nurl = "sqlite:///insource.db"\n')
    store = Store(folder / "insource.db")
    rows: list[tuple[str, dict[str, Any], bool]] = []
    for raw in raws:
        rows += process_capture(raw)
        usage = {k: getattr(raw, k) for k in ("id", "ts", "tenant", "key_id", "model", "served_by", "task", "status")}
        rows.append(("usage", {**usage, "endpoint": "chat.completions", "cost_usd": raw.cost_usd}, False))
    store.write_batch(rows)
    store.close()
    return config


def run(config: Path, *args: str, **kw: Any) -> Any:
    return runner.invoke(app, [*args, "--config", str(config)], **kw)


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    raws = [
        _raw(i, task, tenant="[/]" if i % 2 else "ten\x1b[5mant", model=f"m[/]{i}", text=HOSTILE_TEXT)
        for i, task in enumerate(HOSTILE_TASKS)
    ]
    raws += [_raw(10 + i, "[/]", text=f"{HOSTILE_TEXT} {i}") for i in range(12)]
    return _project(tmp_path / "p", raws)


def _clean(result: Any) -> str:
    """The command's whole output, after checking it succeeded and sent no escape sequence to the terminal."""
    out = result.stdout + result.stderr
    assert result.exit_code == 0, out
    assert ESC not in out and "\x07" not in out, out
    return out


# -- 1. stored text is shown literally --------------------------------------------------------------------------
def test_visible_makes_controls_visible_and_keeps_text() -> None:
    assert common.visible("a\x1b[31mb\x00c\rd\x9be") == "a\\x1b[31mb\\x00c\\rd\\x9be"
    assert common.visible("x\ny\tz") == "x\\ny\\tz"
    assert common.visible("x\ny\tz\x1b", multiline=True) == "x\ny\tz\\x1b"
    assert common.visible("ünï \u202eRTL\u2028") == "ünï \\u202eRTL\\u2028"
    assert common.literal("[/] [bold]x").plain == "[/] [bold]x"
    assert common.shown("[/]\x1b") == "\\[/]\\x1b"


def test_tasks_and_spend_show_hostile_names(hostile: Path) -> None:
    out = _clean(run(hostile, "tasks"))
    for shown in ("[/]", "evil[/bold]", "[link=http://evil.example]click[/link]", "esc\\x1b[31mRED\\x1b[0m"):
        assert shown in out
    assert "nl\\nfake" in out
    for by, shown in (("task", "evil[/bold]"), ("model", "m[/]1"), ("tenant", "ten\\x1b[5mant")):
        assert shown in _clean(run(hostile, "spend", "--by", by))


def test_capture_search_show_and_audit_show_hostile_text(hostile: Path, tmp_path: Path) -> None:
    out = _clean(run(hostile, "capture", "search", "--task", "[/]", "--contains", "close"))
    assert "[/] close [bold]x" in out and "\\x1b]52;c;" in out
    out = _clean(run(hostile, "capture", "show", "req-0003"))
    assert "task=esc\\x1b[31mRED\\x1b[0m" in out and "[/] close [bold]x \\x1b]52;c;ZXZpbA==\\x07" in out
    build = run(hostile, "dataset", "build", "--task", "[/]", "--purpose", "eval", "--out", str(tmp_path / "ds"))
    assert "dataset written to" in _clean(build)
    out = _clean(run(hostile, "audit"))
    assert "dataset.build" in out and "[/]" in out


def test_keys_list_and_create_show_hostile_tenant(tmp_path: Path) -> None:
    config = _project(tmp_path / "p", [])
    cfg = load_config(config)
    store = Store(tmp_path / "p" / "insource.db")
    create_key(store, server_secret(cfg, store), "[/]\x1b[2J")
    store.close()
    assert "[/]\\x1b[2J" in _clean(run(config, "keys", "list"))
    assert "for tenant [/]\\x1b" in _clean(run(config, "keys", "create", "--tenant", "[/]\x1b"))
    result = run(config, "keys", "revoke", "[/]\x1b")
    assert result.exit_code == 2 and ESC not in result.stderr and "[/]\\x1b" in result.stderr, result.stderr


def test_errors_neutralise_control_characters(hostile: Path, tmp_path: Path) -> None:
    result = run(hostile, "capture", "show", "no-such\x1b[31m[/]")
    assert result.exit_code == 2 and ESC not in result.stderr, result.stderr
    assert "no-such\\x1b[31m[/]" in result.stderr
    missing = tmp_path / "nowhere\x1b[31m[/].toml"  # an OSError's file name goes to fail() as it is
    result = runner.invoke(app, ["tasks", "--config", str(missing)])
    assert result.exit_code == 2 and ESC not in result.stderr, result.stderr
    assert "nowhere\\x1b[31m[/].toml" in result.stderr


def test_progress_lines_take_task_names_literally() -> None:
    from insource.cli.progress import StageProgress

    buffer = io.StringIO()
    with StageProgress(Console(file=buffer, width=200, force_terminal=False), "[/]\x1b[31m: ") as progress:
        progress.step("embedding", done=1, total=2)
        progress.say("registered [/]@v1")
    assert "[/]\\x1b[31m: registered [/]@v1" in buffer.getvalue() and ESC not in buffer.getvalue()


# -- 2. --url never follows a redirect with the admin key --------------------------------------------------------
class _Thief(http.server.BaseHTTPRequestHandler):
    """Another origin: records the Authorization header it is sent."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        _Thief.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: Any) -> None:
        pass


class _Redirector(_Thief):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", _Redirector.target + self.path)
        self.end_headers()


def test_url_mode_never_follows_redirects(monkeypatch: pytest.MonkeyPatch) -> None:
    thief = http.server.HTTPServer(("127.0.0.1", 0), _Thief)
    redirector = http.server.HTTPServer(("127.0.0.1", 0), _Redirector)
    for s in (thief, redirector):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    _Redirector.target = f"http://127.0.0.1:{thief.server_port}"
    monkeypatch.setenv("INSOURCE_ADMIN_KEY", "adm-SuperSecretAdmin-9f8e7d")
    try:
        for args in (["keys", "list"], ["spend"]):
            result = runner.invoke(app, [*args, "--url", f"http://127.0.0.1:{redirector.server_port}", "--json"])
            assert result.exit_code == 2, result.stdout + result.stderr
            assert f"answered with a redirect to {_Redirector.target}/admin/" in result.stderr
            assert "not followed" in result.stderr
        assert _Thief.seen == []  # the other origin never saw the admin key
        direct = runner.invoke(app, ["keys", "list", "--url", _Redirector.target, "--json"])
        assert direct.exit_code == 0 and _Thief.seen == ["Bearer adm-SuperSecretAdmin-9f8e7d"]
    finally:
        for s in (thief, redirector):
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/", "http://", "localhost:8700"])
def test_url_must_be_http(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSOURCE_ADMIN_KEY", "adm-x")
    result = runner.invoke(app, ["keys", "list", "--url", url])
    assert result.exit_code == 2 and "--url must be an http:// or https:// address" in result.stderr


# -- 3. numbers and dates are bounded ---------------------------------------------------------------------------
HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "args",
    [
        ["capture", "search", "--task", "[/]", "--contains", "x", "--limit", HUGE],
        ["capture", "search", "--task", "[/]", "--contains", "x", "--limit", "0"],
        ["audit", "--limit", HUGE],
        ["audit", "--limit", "-1"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--split", "random", "--seed", HUGE + "999"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--seed", "-1"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--since", "nan"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--since", "inf"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--until", "1e400"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--until", "-5"],
        ["dataset", "build", "--task", "[/]", "--out", "OUT", "--since", "yesterday"],
        ["spend", "--since", "nan"],
        ["keys", "create", "--tenant", "t", "--rpm", HUGE],
        ["keys", "create", "--tenant", "t", "--budget-usd", "inf"],
        ["route", "set", "--task", "[/]", "--model", "x@v1", "--mode", "cascade", "--threshold", "nan"],
        ["eval", "--task", "[/]", "--model", "x@v1", "--target-agreement", "nan"],
    ],
)
def test_numeric_and_date_options_are_bounded(args: list[str], hostile: Path, tmp_path: Path) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = run(hostile, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    option = next((a for a in args if a in ("--since", "--until")), None)
    if option is not None and args[0] == "dataset":  # refused as a date, not by some later step
        assert f"invalid {option}" in result.stderr, result.stderr


def test_dates_in_range_are_accepted(hostile: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["--since", "2023-11-14", "--until", "1700000100", "--split", "random", "--seed", str(2**32 - 1)]
    result = run(hostile, "dataset", "build", "--task", "[/]", "--purpose", "eval", "--out", str(out), *args)
    assert result.exit_code == 0, result.stderr
    assert _clean(run(hostile, "audit", "--limit", "100000"))


# -- 4. dataset --out never takes the spool or the registry ------------------------------------------------------
def test_out_never_takes_the_spool_or_a_registry_yet_to_be_made(hostile: Path, tmp_path: Path) -> None:
    project = hostile.parent
    spool = project / "spool"
    spool.mkdir()
    (spool / "batch-0001.jsonl").write_text('{"not yet": "saved"}\n')
    (spool / "dataset.json").write_text("{}")  # even when it also looks like a dataset
    assert not (project / "models").exists()
    outs = (spool, spool / "ds", project / "models", project / "models" / "ds", project / "models" / "x@v1")
    for out in outs:
        result = run(hostile, "dataset", "build", "--task", "[/]", "--purpose", "eval", "--out", str(out), "--force")
        assert result.exit_code == 2, (out, result.stdout)
        assert "writer's spool" in result.stderr and "nothing was" in result.stderr, result.stderr
    assert (spool / "batch-0001.jsonl").read_text() == '{"not yet": "saved"}\n'
    assert sorted(p.name for p in spool.iterdir()) == ["batch-0001.jsonl", "dataset.json"]
    assert not (project / "models").exists()
    result = run(hostile, "dataset", "build", "--task", "[/]", "--purpose", "eval", "--out", str(project / "ds"))
    assert result.exit_code == 0, result.stderr


def test_out_never_takes_a_configured_spool_or_registry_elsewhere(tmp_path: Path) -> None:
    config = _project(tmp_path / "p", [_raw(i, "t") for i in range(10)])
    db = tmp_path / "data" / "store.db"
    db.parent.mkdir()
    (tmp_path / "p" / "insource.db").rename(db)
    config.write_text(f'[store]\nurl = "sqlite:///{db}"\n[registry]\npath = "{tmp_path / "reg"}"\n')
    for out in (tmp_path / "data" / "spool", tmp_path / "reg", tmp_path / "reg" / "sub", tmp_path / "data"):
        result = run(config, "dataset", "build", "--task", "t", "--purpose", "eval", "--out", str(out), "--force")
        assert result.exit_code == 2 and "nothing was" in result.stderr, (out, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "p"]


# -- 5. the demo's config cannot be injected ---------------------------------------------------------------------
INJECTION = 'gpt-4o-mini"]\nfree = true\n[models."injected"]\ntargets = ["teacher:x'


def test_demo_refuses_values_that_are_not_plainly_what_they_claim(tmp_path: Path) -> None:
    from insource.demo.runner import DemoSettings, write_config

    url = "http://127.0.0.1:9/v1"
    bad = [
        {"teacher_model": INJECTION},
        {"teacher_url": 'http://x/v1"\nfree = true'},
        {"teacher_url": "file:///etc/passwd"},
        {"teacher_terms": 'openai"\n[models.x]'},
        {"teacher_terms": "no-such-profile"},
        {"teacher_key_env": 'K"\nfree = true'},
    ]
    for fields in bad:
        s = DemoSettings(folder=tmp_path, **{"teacher_url": url, **fields})
        with pytest.raises(ConfigError):
            write_config(s, s.teacher_url or url)
        assert not (tmp_path / "insource.toml").exists()
    s = DemoSettings(
        folder=tmp_path, teacher_url=url, teacher_model="meta-llama/Llama-3.1-8B:q4", teacher_terms="openai"
    )
    cfg = load_config(write_config(s, url))
    assert list(cfg.models) == ["gpt-4o-mini"] and not cfg.models["gpt-4o-mini"].free
    assert cfg.models["gpt-4o-mini"].targets == ["teacher:meta-llama/Llama-3.1-8B:q4"]


def test_demo_cli_refuses_an_injected_model_before_touching_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--dir", str(folder), "--teacher-model", INJECTION])
    assert result.exit_code == 2 and "--teacher-model must be a plain model name" in result.stderr
    assert not folder.exists()


@pytest.mark.parametrize("value", ['a"b', "back\\slash", "tab\tnl\ncr\r", "nul\x00del\x7f", "ünï 🙂", 'x"]\n[y]'])
def test_toml_str_round_trips(value: str) -> None:
    from insource.demo.runner import toml_str

    assert tomllib.loads(f"k = {toml_str(value)}\n") == {"k": value}
