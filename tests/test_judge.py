"""The `judge` metric: the teacher grades the student's answer against its own, asked in both orders (the student
agrees only when both verdicts say EQUIVALENT), each judge request metered and shown in `spend` as an audit.

Wire format and verdicts here; the fake upstream answering judge prompts over HTTP; audits under the judge
metric on the served student (`tests/generative_served.py`); and `insource eval --metric judge`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import run_cli
from tests.generative_served import QUESTION, TASK, Served, ask, set_route

from insource.capture.dataset_read import write_dataset
from insource.demo.teacher import SimulatedTeacher
from insource.routing.judge import judge_messages, judge_request, read_judge_prompt, read_verdict, verdict
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.judge import fair_judge
from insource.testing.server import run_server


def test_the_judge_prompt_carries_both_answers_and_both_verdicts_must_agree() -> None:
    request = [{"role": "system", "content": "Extract."}, {"role": "user", "content": "order 12, broken lamp"}]
    messages = judge_messages(request, '{"order": 12}', "line one\nline two")
    assert read_judge_prompt(messages) == ('{"order": 12}', "line one\nline two")
    assert "order 12, broken lamp" in messages[1]["content"]
    assert read_judge_prompt(request) is None  # not a judge request
    assert read_verdict("EQUIVALENT") and read_verdict("equivalent.") and read_verdict(" **Equivalent**")
    assert not read_verdict("DIFFERENT") and not read_verdict("") and not read_verdict(None)
    assert not read_verdict("I think they are EQUIVALENT")  # the first word is the verdict
    assert verdict(["EQUIVALENT", "EQUIVALENT"])
    assert not verdict(["EQUIVALENT", "DIFFERENT"]) and not verdict([])  # one order disagreeing is enough


def test_the_fake_upstream_answers_judge_requests_in_the_wire_format() -> None:
    fake = FakeUpstream()
    handle = run_server(fake)
    try:
        client = openai.OpenAI(base_url=handle.url + "/v1", api_key="k", max_retries=0)

        def judged(a: str, b: str) -> str:
            body: dict[str, Any] = judge_request([{"role": "user", "content": QUESTION}], a, b)
            reply = client.chat.completions.create(model="gpt-4o-mini", **body)
            return reply.choices[0].message.content or ""

        assert judged("4", "2 + 2 = 4") == judged("2 + 2 = 4", "4") == "EQUIVALENT"
        assert judged("4", "5") == "DIFFERENT" and judged("14", "4") == "DIFFERENT"
        assert judged('{"a": 1, "b": [2]}', '{ "b": [2], "a": 1.0 }') == "EQUIVALENT"
        fake.judge = lambda a, b: a == "4"  # biased towards the first position
        assert (judged("4", "2 + 2 = 4"), judged("2 + 2 = 4", "4")) == ("EQUIVALENT", "DIFFERENT")
        fake.reset()
        SimulatedTeacher(server_error_rate=0.0, speed=0.0).attach(fake)  # the demo's teacher judges too
        assert judged("4", "2 + 2 = 4") == "EQUIVALENT" and judged("4", "5") == "DIFFERENT"
    finally:
        handle.stop()


def _set_metric(s: Served, metric: str) -> None:
    """What `insource eval --metric M` records: the served student reads it again when eval.json changes."""
    path = s.gw.config.parent / "models" / s.model / "eval.json"
    data = json.loads(path.read_text())
    data["latest"] = {**data["latest"], "metric": metric}
    path.write_text(json.dumps(data))
    time.sleep(0.05)  # a new mtime


def _route_agreement(s: Served, comparisons: int) -> float:
    deadline = time.monotonic() + 30
    while True:
        row = json.loads(s.gw.cli("route", "show", "--json").stdout)[0]
        if row["n"] >= comparisons or time.monotonic() > deadline:
            assert row["n"] == comparisons, row
            return float(row["agreement"])
        time.sleep(0.2)


def _audits(s: Served) -> int:
    rows = json.loads(s.gw.cli("spend", "--by", "task", "--json").stdout)
    return sum(int(r["audits"]) for r in rows if r["task"] == TASK)


@pytest.mark.slow
def test_audits_under_the_judge_metric_ask_the_teacher_both_ways_and_are_metered(served: Served) -> None:
    _set_metric(served, "judge")
    try:
        set_route(served, "--mode", "full", "--audit-rate", "1.0")
        before = _audits(served)
        assert ask(served)[1] == served.model  # "2 + 2 = 4"; the teacher says "4"
        # exact would disagree; the teacher, asked both ways, finds them equivalent
        assert _route_agreement(served, 1) == 1.0
        assert _audits(served) - before == 3  # the teacher's own answer + two judge requests
        served.fake.judge = lambda a, b: a == "4"  # a judge that favours whatever comes first
        set_route(served, "--mode", "full", "--audit-rate", "1.0")
        ask(served)
        assert _route_agreement(served, 1) == 0.0  # the swapped order exposes the bias
    finally:
        served.fake.judge = fair_judge
        _set_metric(served, "exact")


@pytest.mark.slow
def test_eval_with_the_judge_metric_asks_the_configured_teacher(served: Served, tmp_path: Path) -> None:
    pairs = [(QUESTION, "4"), ("What is 3+3? Answer with a number only.", "6")]
    ds = write_dataset(tmp_path / "ds", TASK, {"train": pairs, "val": pairs[:1], "test": pairs})
    eval_json = served.gw.config.parent / "models" / served.model / "eval.json"
    kept = eval_json.read_text()
    before = _audits(served)
    try:
        args = ("eval", "--task", TASK, "--model", served.model, "--dataset", str(ds), "--metric", "judge")
        out = json.loads(served.gw.cli(*args, "--json").stdout)
    finally:
        eval_json.write_text(kept)
    assert out["metric"] == "judge" and out["n"] == 2
    # test + val answers, both orders each, and the reachability probe first
    assert out["judge_requests"] == 2 * (2 + 1) + 1 and out["judge_cost_usd"] >= 0
    assert _audits(served) - before == out["judge_requests"]  # metered, shown in spend as audits
    dead = served.gw.config.parent / "dead-teacher.toml"  # the same store and registry; the teacher unreachable
    dead.write_text(
        served.gw.config.read_text().split("[providers.teacher]")[0]
        + '[providers.teacher]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nterms = "self-hosted"\n'
        'max_retries = 0\nconnect_timeout_s = 1.0\n[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n'
    )
    res = run_cli(*args, "--config", str(dead), check=False)
    assert res.returncode == 2 and "could not be reached" in res.stderr and "Traceback" not in res.stderr


def test_eval_names_the_missing_teacher_when_no_alias_teaches_the_task(tmp_path: Path) -> None:
    from insource.config import load_config
    from insource.errors import NotReady
    from insource.evals.judge import teacher_alias

    config = tmp_path / "insource.toml"
    models = '[models."a"]\ntargets = ["p:a"]\n[models."b"]\ntargets = ["p:b"]\n'
    providers = '[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n' + providers + models)
    with pytest.raises(NotReady, match="no model alias in the config teaches 'sums'"):
        teacher_alias(load_config(config), "sums")
    config.write_text('[store]\nurl = "sqlite:///./insource.db"\n' + providers + models.split('[models."b"]')[0])
    assert teacher_alias(load_config(config), "sums") == "a"  # the only alias
