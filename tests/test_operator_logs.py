"""Logs an operator can use (issue 10, item 6) and budget errors that say which budget (item 9).

Real `insource serve` subprocesses in front of the fake upstream, driven by the official openai SDK; the log is
the gateway's own output."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway, free_port, gateway_config, run_cli, start_gateway, stop_gateway

from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle

ENV = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY, "WRONG_UPSTREAM_KEY": "sk-wrong-Secret-778", "TEST_ADMIN_KEY": "adm-1"}
PROMPT = "Please classify PROMPT-MARKER-93x as spam or ham"
ACCESS_FIELDS = {
    "request_id",
    "tenant",
    "model",
    "served_by",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
}


def _start(tmp: Path, upstream: tuple[FakeUpstream, ServerHandle], *args: str, workers: int = 1) -> Gateway:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "insource.toml"
    config.write_text(gateway_config(upstream[1].url, f"http://127.0.0.1:{free_port()}"))
    return start_gateway(config, ENV, workers=workers, args=args)


@pytest.fixture(scope="module")
def json_gw(upstream: tuple[FakeUpstream, ServerHandle], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("logs-json")
    gw = _start(folder, upstream, "--log-format", "json", "--log-level", "info", workers=2)
    yield gw
    stop_gateway(gw)
    shutil.rmtree(folder, ignore_errors=True)


def _client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def _json_lines(gw: Gateway) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith("{")]


def _wait_for(gw: Gateway, request_id: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in _json_lines(gw) if r.get("request_id") == request_id]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _chat(client: openai.OpenAI, **kw: Any) -> Any:
    messages = [{"role": "user", "content": PROMPT}]
    return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, **kw)


def test_every_request_has_an_id_in_the_response_the_usage_record_and_one_log_line(
    json_gw: Gateway, fake: FakeUpstream
) -> None:
    key = json_gw.key()
    raw = _chat(_client(json_gw, key["key"]))
    rid = raw.headers["x-request-id"]
    assert rid.startswith("req_") and raw.parse().choices[0].message.content
    (row,) = json_gw.usage_rows("key_id = ?", (key["id"],), wait_for=1)
    assert row["request_id"] == rid
    (line,) = _wait_for(json_gw, rid)
    assert set(line) >= ACCESS_FIELDS and line["level"] == "INFO" and line["logger"] == "insource.access"
    assert line["tenant"] == "acme" and line["model"] == "gpt-4o-mini" and line["status"] == 200
    assert line["served_by"] == "local:gpt-4o-mini" and line["prompt_tokens"] == row["prompt_tokens"] > 0
    assert line["completion_tokens"] == row["completion_tokens"] > 0
    assert line["cost_usd"] == pytest.approx(row["cost_usd"]) and line["cost_usd"] > 0 and line["latency_ms"] > 0
    log = json_gw.log.read_text()
    assert all(line.startswith("{") for line in log.splitlines() if line.strip())  # the banner too: JSON only
    assert any(r["message"].startswith("insource gateway on http://") for r in _json_lines(json_gw))
    assert "PROMPT-MARKER" not in log and "simulated reply" not in log  # neither the prompt nor the answer
    assert key["key"] not in log and key["key"][:12] not in log and UPSTREAM_KEY not in log


def test_the_callers_request_id_is_kept_when_it_is_safe(json_gw: Gateway, fake: FakeUpstream) -> None:
    key = json_gw.key(tenant="tracer")
    client = _client(json_gw, key["key"])
    raw = _chat(client, extra_headers={"X-Request-Id": "trace-42:abc_DEF.1"})
    assert raw.headers["x-request-id"] == "trace-42:abc_DEF.1"
    again = _chat(client, extra_headers={"X-Request-Id": "trace-42:abc_DEF.1"})  # a repeated id is still metered
    assert again.headers["x-request-id"] == "trace-42:abc_DEF.1"
    rows = json_gw.usage_rows("key_id = ?", (key["id"],), wait_for=2)
    assert [r["request_id"] for r in rows] == ["trace-42:abc_DEF.1"] * 2 and rows[0]["id"] != rows[1]["id"]
    assert len(_wait_for(json_gw, "trace-42:abc_DEF.1", 2)) == 2
    for bad in ("x" * 129, "has space", "new\\nline", "<script>", ""):
        raw = _chat(client, extra_headers={"X-Request-Id": bad})
        assert raw.headers["x-request-id"].startswith("req_"), bad
    assert "<script>" not in json_gw.log.read_text()


def test_streams_and_embeddings_carry_the_id(json_gw: Gateway, fake: FakeUpstream) -> None:
    key = json_gw.key(tenant="streamer")
    client = _client(json_gw, key["key"])
    raw = _chat(client, stream=True)  # with_raw_response on a stream: the headers, then the events
    rid = raw.headers["x-request-id"]
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    emb = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello")
    rows = json_gw.usage_rows("key_id = ?", (key["id"],), wait_for=2)
    assert {r["request_id"] for r in rows} == {rid, emb.headers["x-request-id"]}
    (line,) = _wait_for(json_gw, rid)
    assert line["stream"] is True and line["status"] == 200


def _ask(client: openai.OpenAI, model: str, content: str = PROMPT) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])


def _status_error(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as err:
        call()
    return err.value


def test_errors_carry_the_id_too(json_gw: Gateway) -> None:
    key = json_gw.key(tenant="errs")["key"]
    unauthorized = _status_error(lambda: _chat(_client(json_gw, "sk-not-a-key")))
    assert unauthorized.status_code == 401 and unauthorized.response.headers["x-request-id"].startswith("req_")
    lines = _wait_for(json_gw, unauthorized.response.headers["x-request-id"])
    assert lines and lines[0]["status"] == 401 and "sk-not-a-key" not in json_gw.log.read_text()
    client = _client(json_gw, key)
    missing = _status_error(
        lambda: client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    )
    assert missing.status_code == 404 and missing.response.headers["x-request-id"]
    listed = client.models.with_raw_response.list()
    assert listed.headers["x-request-id"].startswith("req_")
    unknown = httpx.get(json_gw.base_url + "/nope", headers={"X-Request-Id": "mine-1"})
    assert unknown.status_code == 404 and unknown.headers["x-request-id"] == "mine-1"
    wrong_method = httpx.get(json_gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert wrong_method.status_code == 405 and wrong_method.headers["x-request-id"].startswith("req_")


def test_budget_errors_name_the_budget(json_gw: Gateway) -> None:
    created = json_gw.key(tenant="small", budget_usd=0.0000001)
    err = _status_error(lambda: _chat(_client(json_gw, created["key"])))
    assert err.status_code == 429 and err.code == "budget_exceeded"
    assert f"key {created['id']}" in err.message and "tenant" not in err.message
    rid = err.response.headers["x-request-id"]
    (row,) = json_gw.usage_rows("key_id = ?", (created["id"],), wait_for=1)
    assert row["request_id"] == rid and row["status"] == 429
    tenant_key = json_gw.key(tenant="thrifty")  # [tenants.thrifty] budget_usd = 0.000001
    err = _status_error(lambda: _chat(_client(json_gw, tenant_key["key"])))
    assert err.status_code == 429 and "tenant 'thrifty'" in err.message and tenant_key["id"] not in err.message


def test_upstream_failures_are_warnings_with_provider_and_status(json_gw: Gateway, fake: FakeUpstream) -> None:
    client = _client(json_gw, json_gw.key(tenant="ops")["key"])
    auth = _status_error(
        lambda: client.chat.completions.create(model="badkey-mini", messages=[{"role": "user", "content": PROMPT}])
    )
    rid = auth.response.headers["x-request-id"]
    warnings = [r for r in _wait_for(json_gw, rid, 2) if r["level"] == "WARNING"]
    assert warnings and warnings[0]["provider"] == "badkey" and warnings[0]["error_code"] == "upstream_auth_failed"
    assert warnings[0]["status"] == 502 and "401" in warnings[0]["message"]
    fake.fail_next(500, count=10)
    failed = _status_error(
        lambda: client.chat.completions.create(model="flaky-mini", messages=[{"role": "user", "content": PROMPT}])
    )
    rid = failed.response.headers["x-request-id"]
    warnings = [r for r in _wait_for(json_gw, rid, 4) if r["level"] == "WARNING"]
    assert len(warnings) == 3 and {w["provider"] for w in warnings} == {"flaky"}  # the try and 2 retries
    assert all(w["status"] == 502 for w in warnings)
    log = json_gw.log.read_text()
    assert "sk-wrong-Secret-778" not in log and UPSTREAM_KEY not in log and "PROMPT-MARKER" not in log


def test_circuit_opening_is_a_warning(json_gw: Gateway, fake: FakeUpstream) -> None:
    client = _client(json_gw, json_gw.key(tenant="breaker")["key"])
    fake.fail_next(503, count=40)
    for _ in range(4):  # flaky opens after 5 consecutive failures (3 attempts a request)
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="flaky-mini", messages=[{"role": "user", "content": "x"}])
    deadline = time.monotonic() + 5
    while not [r for r in _json_lines(json_gw) if r["message"].startswith("circuit opened")]:
        assert time.monotonic() < deadline, "no circuit-opened warning"
        time.sleep(0.05)
    opened = next(r for r in _json_lines(json_gw) if r["message"].startswith("circuit opened"))
    assert opened["level"] == "WARNING" and opened["provider"] == "flaky"


def test_text_format_and_warning_level(upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path) -> None:
    quiet = _start(tmp_path / "quiet", upstream, "--log-level", "warning")
    try:
        key = quiet.key()["key"]
        rid = _chat(_client(quiet, key)).headers["x-request-id"]
        _status_error(
            lambda: _client(quiet, key).chat.completions.create(
                model="badkey-mini", messages=[{"role": "user", "content": "x"}]
            )
        )
    finally:
        stop_gateway(quiet)
    log = quiet.log.read_text()
    assert rid not in log and "insource.access" not in log  # no access lines at warning
    assert "WARNING insource.upstream: upstream failed" in log and '"provider":"badkey"' in log
    text = _start(tmp_path / "text", upstream, "--log-format", "text")
    try:
        rid = _chat(_client(text, text.key()["key"]), extra_headers={"X-Request-Id": "t-1"}).headers["x-request-id"]
        deadline = time.monotonic() + 5
        while '"request_id":"t-1"' not in text.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop_gateway(text)
    (line,) = [ln for ln in text.log.read_text().splitlines() if '"request_id":"t-1"' in ln]
    head, _, fields = line.partition(" INFO insource.access: request ")
    assert head.endswith("Z") and rid == "t-1"
    assert set(json.loads(fields)) >= ACCESS_FIELDS and json.loads(fields)["status"] == 200
    assert "PROMPT-MARKER" not in text.log.read_text()


def test_serve_refuses_a_config_naming_an_unset_variable(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text(
        '[server]\nadmin_key = "env::INSOURCE_TEST_UNSET_ADMIN"\n'
        '[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key = "env::INSOURCE_TEST_UNSET_KEY"\n'
        '[models.m]\ntargets = ["up:m"]\nfree = true\n'
    )
    result = run_cli("serve", "--config", str(config), "--port", str(free_port()), check=False, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "INSOURCE_TEST_UNSET_ADMIN" in message and "INSOURCE_TEST_UNSET_KEY" in message
    assert "providers.up.api_key" in message
    assert not (tmp_path / "insource.db").exists()


def test_the_in_process_ledger_names_the_first_budget_that_would_overshoot() -> None:
    from insource.errors import BudgetExceeded
    from insource.metering.budgets import Ledger

    ledger = Ledger(spent={"tenant:acme": 4.99})
    ledger.reserve([("key:key_1", 10.0), ("tenant:acme", 5.0)], 0.005)
    with pytest.raises(BudgetExceeded) as err:
        ledger.reserve([("key:key_1", 10.0), ("tenant:acme", 5.0)], 0.01)
    assert "tenant 'acme'" in err.value.message and "$5" in err.value.message and err.value.status == 429
    assert ledger.reserved == {"key:key_1": 0.005, "tenant:acme": 0.005}  # nothing booked by the refusal
    with pytest.raises(BudgetExceeded) as err:
        ledger.reserve([("key:key_1", 0.001)], 0.01)
    assert "key key_1" in err.value.message and "($0.001)" in err.value.message


def test_the_log_handler_writes_whole_lines_in_atomic_chunks() -> None:
    import io
    import logging

    from insource.server.logs import FlushingStreamHandler, TextFormatter

    class Recorder(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, s: str) -> int:
            self.writes.append(s)
            return super().write(s)

    stream = Recorder()
    handler = FlushingStreamHandler(stream, interval=0.05)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("insource.test-handler")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        for i in range(100):
            logger.info("line %d", i, extra={"fields": {"pad": "x" * 100}})
        assert all(len(w) <= FlushingStreamHandler.CHUNK and w.endswith("\n") for w in stream.writes)
        assert 1 <= len(stream.writes) < 20  # buffered: not a write per line
        deadline = time.monotonic() + 2
        while stream.getvalue().count("\n") < 100:  # the rest within the flush interval
            assert time.monotonic() < deadline
            time.sleep(0.01)
        logger.warning("now")
        assert stream.getvalue().endswith("now\n")  # warnings at once
    finally:
        logger.removeHandler(handler)


def test_an_idle_log_handler_thread_waits_for_a_line_instead_of_polling() -> None:
    """Old code: the flusher thread woke every `interval` (5 times a second) with nothing to write. Now it waits
    on an event until a line is kept, writes it `interval` later, and waits again."""
    import io
    import logging
    import sys
    import threading

    from insource.server.logs import FlushingStreamHandler

    def flusher_top_frame(handler: FlushingStreamHandler) -> str:
        (thread,) = [t for t in threading.enumerate() if getattr(t, "_target", None) == handler._flusher]
        frame = sys._current_frames()[thread.ident or 0]
        return frame.f_code.co_name

    stream = io.StringIO()
    handler = FlushingStreamHandler(stream, interval=0.05)
    time.sleep(0.1)
    assert flusher_top_frame(handler) == "wait"  # blocked on the event, not in a sleep loop
    record = logging.LogRecord("insource.test", logging.INFO, "", 0, "lone line", (), None)
    handler.handle(record)
    deadline = time.monotonic() + 2
    while "lone line" not in stream.getvalue():  # written within the interval, without another line to push it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.5)  # an interval without a line: back to waiting
    assert flusher_top_frame(handler) == "wait"


def test_access_records_carry_every_attribute_a_log_record_has() -> None:
    """The access log builds its records directly (cheaper): handlers and formatters must see the same record."""
    import logging

    from insource.service.access_log import ACCESS, AccessRecord

    ours = vars(AccessRecord("request", {"status": 200}))
    std = vars(
        ACCESS.makeRecord(ACCESS.name, logging.INFO, "", 0, "request", (), None, extra={"fields": {"status": 200}})
    )
    assert set(ours) == set(std)
    timing = {"created", "msecs", "relativeCreated"}
    assert {k: v for k, v in ours.items() if k not in timing} == {k: v for k, v in std.items() if k not in timing}
    assert abs(ours["created"] - std["created"]) < 5
