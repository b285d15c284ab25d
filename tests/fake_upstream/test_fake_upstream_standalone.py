"""FakeUpstream outside the shared fixture server: run_server's lifecycle, fast mode, the standalone CLI, demo
data and the simulated teacher."""

from __future__ import annotations

import collections
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from tests.fake_upstream.helpers import KEY, chat

from insource.demo import data as demo_data
from insource.demo.teacher import SimulatedTeacher, customer_text, keyword_label
from insource.testing import FakeUpstream, run_server

# ---------------------------------------------------------------- server lifecycle, fast mode, CLI


def test_run_server_starts_and_stops_fast_even_with_a_hung_request() -> None:
    up = FakeUpstream()
    t0 = time.perf_counter()
    handle = run_server(up)
    started = time.perf_counter() - t0
    up.hang = True

    def hung_call() -> None:
        with pytest.raises(httpx.TransportError):  # the server drops it on stop
            httpx.post(f"{handle.url}/v1/embeddings", json={"model": "m", "input": "x"}, timeout=5)

    worker = threading.Thread(target=hung_call, daemon=True)
    worker.start()
    assert up.wait_for_requests(1, timeout=3)
    t0 = time.perf_counter()
    handle.stop()
    stopped = time.perf_counter() - t0
    worker.join(2)
    assert started < 1.0 and stopped < 1.0 and not handle.running and not worker.is_alive()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((handle.host, handle.port), timeout=1):
        pass


def test_fast_mode_replays_preserialised_answers() -> None:
    up = FakeUpstream(fast=True)
    with run_server(up) as handle, openai.OpenAI(base_url=f"{handle.url}/v1", api_key="k", max_retries=0) as c:
        a = chat(c)
        b = chat(c, messages=[{"role": "user", "content": "other"}])
        assert a.id == b.id and a.choices[0].message.content == b.choices[0].message.content
        s1 = "".join(x.choices[0].delta.content or "" for x in chat(c, stream=True) if x.choices)
        s2 = "".join(x.choices[0].delta.content or "" for x in chat(c, stream=True) if x.choices)
        assert s1 == s2 == a.choices[0].message.content
        up.fail_next(500)
        with pytest.raises(openai.InternalServerError):
            chat(c)
        assert len(up.requests) == 3  # first chat, first stream, the fault: replays are not recorded


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    """Until the standalone server answers /health (it must not exit first; 15 s at most)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "standalone server did not start"
            time.sleep(0.05)


def test_standalone_cli() -> None:
    port = _free_port()
    env = {**os.environ, "FAKE_KEY": "sk-cli"}
    cmd = [sys.executable, "-m", "insource.testing.fake_upstream", "--port", str(port), "--api-key-env", "FAKE_KEY"]
    proc = subprocess.Popen([*cmd, "--delay-ms", "5"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(port, proc)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0) as c:
            assert chat(c).choices
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "simulated" in err and "Traceback" not in err and "Warning" not in err
    missing = subprocess.run([*cmd[:-1], "NOT_SET_ANYWHERE"], capture_output=True, text=True, timeout=30, env=env)
    assert missing.returncode == 2 and "NOT_SET_ANYWHERE" in missing.stderr and "Traceback" not in missing.stderr


def test_standalone_simulated_teacher() -> None:
    """`python -m insource.demo.teacher` is the fake upstream answering as the demo's teacher: labels, not echoes."""
    port = _free_port()
    cmd = [sys.executable, "-m", "insource.demo.teacher", "--port", str(port), "--teacher-speed", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(port, proc)
        text = "Hi, I want a refund for the blender I returned last week."
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=0) as c:
            answer = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
        assert answer.choices[0].message.content in demo_data.INTENTS
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "SIMULATED teacher" in err and "Traceback" not in err
    bad = subprocess.run([*cmd[:-1], "-1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--teacher-speed" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- demo data and teacher


def test_demo_data_is_deterministic_and_diverse() -> None:
    a = demo_data.generate(1500, seed=7)
    assert a == demo_data.generate(1500, seed=7) and a != demo_data.generate(1500, seed=8)
    assert demo_data.generate(100, seed=7) == a[:100]
    texts = [t for t, _ in a]
    counts = collections.Counter(label for _, label in a)
    assert 12 <= len(demo_data.INTENTS) <= 16 and set(counts) == set(demo_data.INTENTS)
    assert len(set(texts)) / len(texts) >= 0.97
    assert max(counts.values()) / len(a) < 0.25 and min(counts.values()) >= 30
    ambiguous = [t for t in texts if demo_data.ambiguous_alternative(t)]
    assert 0.02 <= len(ambiguous) / len(a) <= 0.07
    assert statistics.mean(len(t.split()) for t in texts) > 6
    assert demo_data.generate(0, 1) == []
    with pytest.raises(ValueError):
        demo_data.generate(-1, 1)


def test_system_prompt_and_messages() -> None:
    for intent in demo_data.INTENTS:
        assert f"- {intent}:" in demo_data.SYSTEM_PROMPT
    assert demo_data.SYSTEM_PROMPT.rstrip().endswith("Answer with the intent label only.")
    msgs = demo_data.build_messages("Where is my order #123?")
    assert [m["role"] for m in msgs] == ["system", "user"] and customer_text(msgs) == "Where is my order #123?"
    assert customer_text([{"role": "user", "content": 'Customer message: "cancel it"'}]) == "cancel it"


def test_teacher_accuracy_and_mistakes() -> None:
    pairs = demo_data.generate(3000, seed=11)
    teacher = SimulatedTeacher(error_rate=0.01, ambiguous_flip_rate=0.3, seed=3, speed=0)
    plain = [(t, g) for t, g in pairs if demo_data.ambiguous_alternative(t) is None]
    wrong = sum(teacher.classify(t) != g for t, g in plain)
    assert 0.003 <= wrong / len(plain) <= 0.02 and wrong == teacher.injected_errors
    amb = [(t, g) for t, g in pairs if demo_data.ambiguous_alternative(t) is not None]
    agree = sum(teacher.classify(t) == g for t, g in amb) / len(amb)
    assert 0.5 <= agree <= 0.9
    perfect = SimulatedTeacher(error_rate=0, ambiguous_flip_rate=0, speed=0)
    assert all(perfect.classify(t) == g for t, g in pairs)
    fresh = demo_data.generate(2000, seed=12)
    kw = sum(keyword_label(t) == g for t, g in fresh if demo_data.ambiguous_alternative(t) is None)
    assert kw / sum(1 for t, _ in fresh if demo_data.ambiguous_alternative(t) is None) >= 0.9
    learned = SimulatedTeacher(error_rate=0, use_registry=False)
    learned.learn([("zzz unknown text", "invoice_request")])
    assert learned.classify("zzz unknown text") == "invoice_request"


def test_teacher_latency_model() -> None:
    t = SimulatedTeacher(seed=5)
    samples = [t.sample_latency() for _ in range(4000)]
    assert abs(statistics.mean(samples) - 0.25) < 0.015 and statistics.stdev(samples) > 0.05
    assert SimulatedTeacher(speed=0).sample_latency() == 0.0
    assert abs(statistics.mean(SimulatedTeacher(speed=0.1).sample_latency() for _ in range(500)) - 0.025) < 0.005


def test_teacher_behind_fake_upstream() -> None:
    teacher = SimulatedTeacher(speed=0.02, error_rate=0.0, server_error_rate=0.0, ambiguous_flip_rate=0.0)
    up = teacher.attach(FakeUpstream(api_key=KEY))
    assert up.error_rate == 0.0 and up.delay_fn is not None
    assert SimulatedTeacher().attach(FakeUpstream()).error_rate == 0.005
    pairs = demo_data.generate(20, seed=99)
    with run_server(up) as handle, openai.OpenAI(base_url=f"{handle.url}/v1", api_key=KEY, max_retries=0) as c:
        answers = [chat(c, messages=demo_data.build_messages(text)) for text, _ in pairs]
    assert all(a.system_fingerprint == "fp_insource_simulated" for a in answers)
    assert [a.choices[0].message.content for a in answers] == [label for _, label in pairs]
    assert "SIMULATED" in teacher.describe() and "gpt-4o-mini" in teacher.describe()
