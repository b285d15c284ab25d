"""The insourcing router end to end: a real student, a real `insource serve`, the official SDK."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from openai.types import CompletionUsage
from tests.conftest import Gateway, run_cli, start_gateway, stop_gateway

from insource.demo import data as demo_data
from insource.demo.teacher import SimulatedTeacher
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

TASK = "intent"


@dataclass
class Trained:
    gw: Gateway
    fake: FakeUpstream
    teacher: SimulatedTeacher
    model: str
    key: str


def ask(t: Trained, text: str, stream: bool = False) -> tuple[str, str]:
    c = openai.OpenAI(base_url=t.gw.base_url, api_key=t.key, max_retries=0)
    if stream:
        with c.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=demo_data.build_messages(text),
            metadata={"task": TASK},
            stream=True,  # type: ignore[arg-type]
        ) as resp:
            served = resp.headers["x-insource-served-by"]
            parts = [ch.choices[0].delta.content or "" for ch in resp.parse() if ch.choices]
        return "".join(parts), served
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=demo_data.build_messages(text),
        metadata={"task": TASK},  # type: ignore[arg-type]
    )
    return raw.parse().choices[0].message.content or "", raw.headers["x-insource-served-by"]


async def _replay(base_url: str, key: str, pairs: list[tuple[str, str]]) -> None:
    limit = asyncio.Semaphore(16)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as c:

        async def one(text: str) -> None:
            async with limit:
                await c.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=demo_data.build_messages(text),
                    metadata={"task": TASK},  # type: ignore[arg-type]
                )

        await asyncio.gather(*(one(text) for text, _ in pairs))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    folder = tmp_path_factory.mktemp("router")
    teacher = SimulatedTeacher(speed=0, error_rate=0, server_error_rate=0, ambiguous_flip_rate=0)
    fake = teacher.attach(FakeUpstream())
    handle: ServerHandle = run_server(fake)
    config = folder / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[providers.teacher]\nkind = "openai"\n'
        f'base_url = "{handle.url}/v1"\nterms = "self-hosted"\n[models."gpt-4o-mini"]\n'
        f'targets = ["teacher:gpt-4o-mini"]\n'
    )
    gw = start_gateway(config)
    key = gw.key("router-tests")["key"]
    asyncio.run(_replay(gw.base_url, key, demo_data.generate(700, seed=11, ambiguous_share=0)))
    time.sleep(0.5)
    gw.cli("dataset", "build", "--task", TASK, "--out", str(folder / "ds"), "--json")
    distilled = json.loads(gw.cli("distill", "--task", TASK, "--dataset", str(folder / "ds"), "--json").stdout)
    yield Trained(gw, fake, teacher, distilled["model"], key)
    stop_gateway(gw)
    handle.stop()
    shutil.rmtree(folder, ignore_errors=True)


def set_route(t: Trained, *args: str) -> None:
    t.gw.cli("route", "set", "--task", TASK, "--model", t.model, *args)
    time.sleep(1.1)  # every worker applies a route within a second


def route_row(t: Trained) -> dict[str, object]:
    rows = json.loads(t.gw.cli("route", "show", "--json").stdout)
    return next(r for r in rows if r["task"] == TASK)


def fresh(n: int, seed: int) -> list[tuple[str, str]]:
    return demo_data.generate(n, seed=seed, ambiguous_share=0)


def test_shadow_records_agreement_teacher_answers(trained: Trained) -> None:
    set_route(trained, "--mode", "shadow")
    served = {ask(trained, text)[1] for text, _ in fresh(30, 101)}
    assert served == {"teacher:gpt-4o-mini"}
    time.sleep(0.5)
    row = route_row(trained)
    assert row["mode"] == "shadow" and row["n"] >= 30
    assert isinstance(row["agreement"], float) and row["agreement"] > 0.8
    assert set(row) >= {
        "task",
        "model",
        "mode",
        "threshold",
        "percent",
        "audit_rate",
        "floor",
        "agreement",
        "n",
        "events",
    }


def test_canary_sends_a_share_to_the_student(trained: Trained) -> None:
    set_route(trained, "--mode", "canary", "--percent", "50")
    served = [ask(trained, text)[1] for text, _ in fresh(80, 102)]
    share = served.count(trained.model) / len(served)
    assert 0.2 < share < 0.8
    assert set(served) == {trained.model, "teacher:gpt-4o-mini"}


def test_cascade_student_answers_when_sure_without_audits(trained: Trained) -> None:
    set_route(trained, "--mode", "cascade", "--threshold", "0.5")
    trained.fake.clear_requests()
    pairs = fresh(60, 103)
    results = [ask(trained, text) for text, _ in pairs]
    by_student = [(a, gold) for (a, who), (_, gold) in zip(results, pairs, strict=True) if who == trained.model]
    assert len(by_student) > 30
    assert sum(a == gold for a, gold in by_student) / len(by_student) > 0.8
    assert all(a in demo_data.INTENTS for a, _ in by_student)  # the teacher's exact label strings
    time.sleep(0.5)
    assert len(trained.fake.requests) == 60 - len(by_student)  # no audits in cascade by default
    rows = trained.gw.usage_rows("served_by=?", (trained.model,), wait_for=len(by_student))
    assert rows and all(r["cost_avoided_usd"] > r["cost_usd"] > 0 for r in rows)  # real serving cost, priced
    spend = json.loads(trained.gw.cli("spend", "--by", "task", "--json").stdout)
    assert next(r for r in spend if r["task"] == TASK)["cost_avoided_usd"] > 0


def test_requests_a_student_cannot_honour_go_to_the_teacher(trained: Trained) -> None:
    set_route(trained, "--mode", "full", "--audit-rate", "0")
    c = openai.OpenAI(base_url=trained.gw.base_url, api_key=trained.key, max_retries=0)
    text, _gold = fresh(1, 110)[0]
    extras: list[dict[str, object]] = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
        {"logprobs": True, "top_logprobs": 2},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    ]
    for extra in extras:
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=demo_data.build_messages(text),
            metadata={"task": TASK},  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )
        assert raw.headers["x-insource-served-by"] == "teacher:gpt-4o-mini", extra
    assert ask(trained, text)[1] == trained.model  # a plain request is the student's


def test_cascade_streams_student_answers(trained: Trained) -> None:
    set_route(trained, "--mode", "cascade", "--threshold", "0.0")
    text, _gold = fresh(1, 104)[0]
    answer, served = ask(trained, text, stream=True)
    assert served == trained.model and answer in demo_data.INTENTS


def rollbacks(t: Trained) -> int:
    return sum(e["kind"] == "rollback" for e in route_row(t)["events"])  # type: ignore[attr-defined]


def drive_until_rollback(t: Trained, seed: int, limit: int = 200) -> int:
    """Ask until a new rollback event shows in `route show`; returns how many requests that took."""
    before = rollbacks(t)
    texts = [text for text, _ in fresh(limit, seed)]
    for i in range(0, len(texts), 10):
        for text in texts[i : i + 10]:
            ask(t, text)
        time.sleep(0.3)
        if rollbacks(t) > before:
            return i + 10
    raise AssertionError(f"no rollback after {limit} requests: {route_row(t)}")


@contextlib.contextmanager
def drifted(t: Trained) -> Iterator[None]:
    original = t.fake.responder
    t.fake.responder = lambda model, messages, body: "speak_to_agent"  # the teacher's answers change
    try:
        yield
    finally:
        t.fake.responder = original


def test_full_with_audits_then_prompt_rollback_on_drift(trained: Trained) -> None:
    set_route(trained, "--mode", "full", "--audit-rate", "1.0", "--floor", "0.95")
    served = {ask(trained, text)[1] for text, _ in fresh(20, 105)}
    assert served == {trained.model}
    assert trained.fake.wait_for_requests(20, timeout=10)
    with drifted(trained):
        sent = drive_until_rollback(trained, 106)
        assert sent <= 60  # a drifted student goes within a few dozen audits (not 231 at this floor)
        time.sleep(1.1)
        assert {ask(trained, text)[1] for text, _ in fresh(5, 107)} == {"teacher:gpt-4o-mini"}
    row = route_row(trained)
    last = row["events"][-1]  # type: ignore[index]
    assert last["kind"] == "rollback" and last["detail"]["upper_bound"] < 0.95 and not row["active"]
    assert row["state"] == "rolled_back"  # not "off": nobody turned it off by hand
    set_route(trained, "--mode", "full", "--audit-rate", "1.0", "--floor", "0.8")
    row = route_row(trained)  # a new policy starts a new window: the drifted comparisons do not count
    assert row["active"] and row["state"] == "answering" and row["n"] == 0 and row["agreement"] is None
    assert {ask(trained, text)[1] for text, _ in fresh(5, 108)} == {trained.model}


def test_shadow_rolls_back_on_drift_too(trained: Trained) -> None:
    set_route(trained, "--mode", "shadow", "--floor", "0.9")
    with drifted(trained):
        assert drive_until_rollback(trained, 109) <= 60
        row = route_row(trained)
        assert not row["active"] and row["events"][-1]["kind"] == "rollback"  # type: ignore[index]
        assert isinstance(row["agreement"], float) and row["agreement"] < 0.5
        time.sleep(1.1)
        n = row["n"]
        assert {ask(trained, text)[1] for text, _ in fresh(10, 110)} == {"teacher:gpt-4o-mini"}
        time.sleep(0.5)
        assert route_row(trained)["n"] == n  # rolled back: the student no longer predicts


def test_two_workers_roll_back_once_on_shared_evidence(trained: Trained) -> None:
    gw2 = start_gateway(trained.gw.config, workers=2)  # same store, two more workers
    try:
        two = dataclasses.replace(trained, gw=gw2)
        set_route(two, "--mode", "full", "--audit-rate", "1.0", "--floor", "0.95")
        assert {ask(two, text)[1] for text, _ in fresh(10, 111)} == {trained.model}
        before = rollbacks(two)
        with drifted(trained):
            assert drive_until_rollback(two, 112) <= 60
            time.sleep(1.5)
            assert {ask(two, text)[1] for text, _ in fresh(10, 113)} == {"teacher:gpt-4o-mini"}  # every worker
        assert rollbacks(two) == before + 1  # judged by several workers, recorded once
    finally:
        stop_gateway(gw2)


def test_student_usage_counts_tokens_like_the_teacher(trained: Trained) -> None:
    text = "hello, I want my money back for order 12345, the blender arrived broken"
    c = openai.OpenAI(base_url=trained.gw.base_url, api_key=trained.key, max_retries=0)

    def usage() -> tuple[str, CompletionUsage]:
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=demo_data.build_messages(text),
            metadata={"task": TASK},  # type: ignore[arg-type]
        )
        done = raw.parse()
        assert done.usage is not None
        return raw.headers["x-insource-served-by"], done.usage

    set_route(trained, "--mode", "shadow")
    started = time.time()
    by_teacher, teacher = usage()
    set_route(trained, "--mode", "full")
    by_student, student = usage()
    assert (by_teacher, by_student) == ("teacher:gpt-4o-mini", trained.model)
    assert student.prompt_tokens == teacher.prompt_tokens  # counted from the messages, not the JSON's size
    assert student.completion_tokens == teacher.completion_tokens == 1  # one label
    rows = trained.gw.usage_rows("endpoint='chat' AND ts>?", (started,), wait_for=2)
    cost = {r["served_by"]: r for r in rows}
    assert len(rows) == 2 and set(cost) == {by_teacher, by_student}
    assert cost[by_student]["cost_avoided_usd"] == pytest.approx(cost[by_teacher]["cost_usd"])


def test_route_set_refuses_bad_input(trained: Trained) -> None:
    for args, needle in (
        (["--model", "intent@v99", "--mode", "cascade"], "no model"),
        (["--model", trained.model, "--mode", "cascade", "--threshold", "1.5"], "within [0, 1]"),
        (["--model", trained.model, "--mode", "sideways"], "--mode"),
    ):
        result = trained.gw.cli("route", "set", "--task", TASK, *args, check=False)
        assert result.returncode != 0 and needle in result.stderr and "Traceback" not in result.stderr
    other = trained.gw.cli(
        "route", "set", "--task", "other-task", "--model", trained.model, "--mode", "full", check=False
    )
    assert other.returncode != 0 and "trained for task" in other.stderr


def test_route_set_refuses_options_that_do_not_fit_the_mode(trained: Trained) -> None:
    for args, needle in (
        (["--mode", "cascade", "--threshold", "0.5", "--target-agreement", "0.9"], "not both"),
        (["--mode", "canary"], "canary needs --percent"),
        (["--mode", "canary", "--percent", "0"], "canary needs --percent"),
        (["--mode", "shadow", "--percent", "20"], "--percent applies to canary only"),
        (["--mode", "shadow", "--threshold", "0.5"], "apply to cascade only"),
        (["--mode", "full", "--target-agreement", "0.9"], "apply to cascade only"),
        (["--mode", "shadow", "--audit-rate", "0.5"], "--audit-rate does not apply"),
    ):
        result = trained.gw.cli("route", "set", "--task", TASK, "--model", trained.model, *args, check=False)
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr, args


def write_config(folder: Path, trained: Trained, routes: str) -> Path:
    """A config with its own store, the trained registry, and `routes`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "insource.toml"
    registry = trained.gw.config.parent / "models"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[registry]\npath = "{registry}"\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nterms = "self-hosted"\n'
        f'[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n{routes}'
    )
    return config


def test_config_routes_are_checked_like_route_set(trained: Trained, tmp_path: Path) -> None:
    from insource.config import load_config
    from insource.errors import ConfigError
    from insource.service.routes import check_config_routes

    config = write_config(
        tmp_path,
        trained,
        f'[routes.ghost]\nmodel = "ghost@v3"\nmode = "full"\n'
        f'[routes.other]\nmodel = "{trained.model}"\nmode = "cascade"\nthreshold = 0.2\n'
        f'[routes.intent]\nmodel = "{trained.model}"\nmode = "cascade"\ntarget_agreement = 0.777\n',
    )
    with pytest.raises(ConfigError) as refused:
        check_config_routes(load_config(config))
    message = refused.value.message
    assert "[routes.ghost]: no model 'ghost@v3'" in message
    assert f"[routes.other]: model '{trained.model}' was trained for task 'intent', not 'other'" in message
    assert "[routes.intent]: no threshold is known for agreement 0.777" in message
    rows = {r["task"]: r for r in json.loads(run_cli("route", "show", "--json", "--config", str(config)).stdout)}
    assert not any(r["active"] for r in rows.values())  # a route that fails its check is never served
    assert rows["ghost"]["problem"].startswith("[routes.ghost]: no model")
    serve = run_cli("serve", "--config", str(config), "--port", "9", check=False, timeout=60)
    assert serve.returncode == 2 and "[routes.ghost]: no model" in " ".join(serve.stderr.split())
    good = write_config(
        tmp_path / "good", trained, f'[routes.intent]\nmodel = "{trained.model}"\nmode = "full"\naudit_rate = 0.1\n'
    )
    check_config_routes(load_config(good))
    assert json.loads(run_cli("route", "show", "--json", "--config", str(good)).stdout)[0]["active"]


def test_broken_student_falls_back_to_teacher(trained: Trained, tmp_path: Path) -> None:
    registry = trained.gw.config.parent / "models"
    source = registry / trained.model
    broken_name = f"{TASK}@v{90}"
    shutil.copytree(source, registry / broken_name)
    info = json.loads((registry / broken_name / "model.json").read_text())
    info.update({"name": broken_name, "version": 90})
    (registry / broken_name / "model.json").write_text(json.dumps(info))
    try:
        trained.gw.cli("route", "set", "--task", TASK, "--model", broken_name, "--mode", "full")
        for onnx in (registry / broken_name).glob("*.onnx"):  # damaged after the route was set
            onnx.write_bytes(b"not a model")
        time.sleep(1.1)
        answer, served = ask(trained, fresh(1, 108)[0][0])
        assert served == "teacher:gpt-4o-mini" and answer
        import httpx

        metrics = httpx.get(trained.gw.url + "/metrics").text
        assert 'insource_student_failures_total{task="intent"} 1' in metrics  # the failure is counted
        refused = trained.gw.cli("route", "set", "--task", TASK, "--model", broken_name, "--mode", "full", check=False)
        assert refused.returncode == 2 and "damaged" in refused.stderr  # a damaged model is never routed to
    finally:
        shutil.rmtree(registry / broken_name)


def test_cascade_target_agreement_uses_the_threshold_eval_found(trained: Trained) -> None:
    missing = trained.gw.cli(
        "route",
        "set",
        "--task",
        TASK,
        "--model",
        trained.model,
        "--mode",
        "cascade",
        "--target-agreement",
        "0.777",
        check=False,
    )
    assert missing.returncode != 0 and "insource eval" in missing.stderr
    folder = trained.gw.config.parent
    ev = json.loads(
        trained.gw.cli(
            "eval",
            "--task",
            TASK,
            "--model",
            trained.model,
            "--dataset",
            str(folder / "ds"),
            "--target-agreement",
            "0.9",
            "--json",
        ).stdout
    )
    assert ev["threshold"] is not None
    set_route(trained, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    assert route_row(trained)["threshold"] == pytest.approx(ev["threshold"])
    unreached = trained.gw.cli(
        "eval", "--task", TASK, "--model", trained.model, "--dataset", str(folder / "ds"), "--target-agreement",
        "1.0", "--json", check=False,
    )  # fmt: skip
    assert unreached.returncode == 3  # the contract: no threshold reaches the target agreement given
    assert json.loads(unreached.stdout)["threshold"] is None  # a Wilson margin never reaches 1.0
    refused = trained.gw.cli(
        "route", "set", "--task", TASK, "--model", trained.model, "--mode", "cascade", "--target-agreement", "1",
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "found no threshold reaching agreement 1" in refused.stderr
    assert "insource eval" not in refused.stderr
