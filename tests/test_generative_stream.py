"""Streaming a generative student's answer through a real `insource serve`, the official SDK as client (the served
student: `tests/generative_served.py`): live token by token in full mode (the time to first token is the
model's), generated first then sent in token-sized chunks in cascade (its confidence is known only at the end),
the usage chunk on `stream_options.include_usage`, and the teacher taking over a student that hangs before its
first token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import httpx
import openai
import pytest
from tests.generative_served import (
    QUESTION,
    STUDENT_SAYS,
    TASK,
    Served,
    ask,
    llama_servers,
    set_route,
)

from insource.service.generative import STALL_S

pytestmark = pytest.mark.slow
COUNTING = "Count from 1 to 20, separated by commas."  # a long answer: up to the student's max_tokens (44)
TEACHER = "teacher:gpt-4o-mini"


def stream(s: Served, question: str = QUESTION, **extra: Any) -> tuple[list[Any], list[float], str]:
    """(the chunks, when each arrived, X-Insource-Served-By) of a streamed answer."""
    c = openai.OpenAI(base_url=s.gw.base_url, api_key=s.key, max_retries=0, timeout=180)
    messages = [{"role": "user", "content": question}]
    with c.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, metadata={"task": TASK}, stream=True, **extra
    ) as resp:
        served = resp.headers["x-insource-served-by"]
        chunks, times = [], []
        for chunk in resp.parse():
            chunks.append(chunk)
            times.append(time.perf_counter())
    return chunks, times, served


def content(chunks: list[Any]) -> list[str]:
    return [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]


def test_full_mode_relays_the_token_stream_as_it_is_generated(served: Served) -> None:
    set_route(served, "--mode", "full")
    ask(served)  # llama.cpp started
    where = ("served_by = ? AND stream = 1", (served.model,))
    before = len(served.gw.usage_rows(*where))  # other tests of the session streamed from this student too
    chunks, times, by = stream(served, COUNTING, stream_options={"include_usage": True})
    assert by == served.model
    pieces = content(chunks)
    assert len(pieces) >= 10 and "".join(pieces).startswith("1")  # one chunk per generated token
    firsts = [t for ch, t in zip(chunks, times, strict=True) if ch.choices and ch.choices[0].delta.content]
    assert firsts[-1] - firsts[0] > 0.05  # relayed as generated, not all at once at the end
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens > 0
    assert all(ch.usage is None for ch in chunks[:-1])
    rows = served.gw.usage_rows(*where, wait_for=before + 1)
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["status"] == 200 and row["completion_tokens"] == usage.completion_tokens
    assert 0 < row["ttft_ms"] < row["latency_ms"] and row["cost_usd"] > 0 and row["cost_avoided_usd"] > 0


def test_cascade_generates_first_then_streams_token_sized_chunks(served: Served) -> None:
    set_route(served, "--mode", "cascade", "--target-agreement", "0.9", "--calibrate", "0")
    chunks, _, by = stream(served, stream_options={"include_usage": True})
    assert by == served.model
    pieces = content(chunks)
    assert "".join(pieces) == STUDENT_SAYS and len(pieces) > 1  # "2 + 2 = 4" in llama.cpp's tokens
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    chunks, _, by = stream(served)  # no usage chunk unless asked for
    assert by == served.model and all(ch.usage is None for ch in chunks) and chunks[-1].choices


def test_a_student_hung_before_its_first_token_leaves_the_stream_to_the_teacher(served: Served) -> None:
    set_route(served, "--mode", "full")
    ask(served)
    (pid,) = llama_servers(served.gw.proc.pid)
    os.kill(pid, signal.SIGSTOP)  # hangs: accepts the request, never answers
    teacher_streams = ("served_by = ? AND stream = 1", (TEACHER,))
    before = len(served.gw.usage_rows(*teacher_streams))
    try:
        started = time.monotonic()
        chunks, _, by = stream(served)
        waited = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):  # the gateway killed it already
            os.kill(pid, signal.SIGKILL)
    assert by == TEACHER and "".join(content(chunks)) == "4"
    assert STALL_S - 0.5 <= waited < 30  # the stalled server was killed; the teacher's stream followed
    row = served.gw.usage_rows(*teacher_streams, wait_for=before + 1)[before]
    assert row["status"] == 200 and row["error_code"] == "student_failed"
    metrics = httpx.get(served.gw.url + "/metrics").text
    assert f'insource_student_failures_total{{task="{TASK}"}}' in metrics
    deadline = time.monotonic() + 120
    while ask(served)[1] != served.model:  # the hung server was killed; the next requests start a new one
        assert time.monotonic() < deadline, "the student never came back"
    assert pid not in llama_servers(served.gw.proc.pid)


async def test_pieces_become_one_chunk_each_unless_they_do_not_spell_the_answer() -> None:
    from insource.metering.usage import Usage
    from insource.service.answerers import ReplyIds, completion_events
    from insource.service.generative import sse_payloads

    async def render(pieces: tuple[str, ...], include_usage: bool) -> list[dict[str, Any]]:
        events = completion_events(
            "t@v1", "2 + 2", 1, Usage(5, 0, 3, 0), ReplyIds("chatcmpl-1", 1), include_usage, pieces
        )
        raw = b"".join([event async for event in events])
        assert raw.endswith(b"data: [DONE]\n\n")
        return [p for p in sse_payloads(raw) if p is not None]

    chunks = await render(("2", " +", " 2"), True)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["2", " +", " 2"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])
    chunks = await render(("2", " -"), False)  # not the answer's tokens: the answer in one chunk
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "2 + 2", None]
    assert all("usage" not in c for c in chunks)


def test_a_student_that_hangs_mid_stream_ends_it_with_an_error_event_and_is_counted(served: Served) -> None:
    """After its first token the teacher can no longer take over: the stream ends with an OpenAI error event
    (the SDK raises it), the record says 502 student_failed, and the next answer comes from a new server."""
    set_route(served, "--mode", "full")
    ask(served)
    (pid,) = llama_servers(served.gw.proc.pid)
    c = openai.OpenAI(base_url=served.gw.base_url, api_key=served.key, max_retries=0, timeout=180)
    messages = [{"role": "user", "content": COUNTING}]
    received = []
    with pytest.raises(openai.APIError, match="failed mid-answer"):
        for chunk in c.chat.completions.create(
            model="gpt-4o-mini", messages=messages, metadata={"task": TASK}, stream=True
        ):
            received.append(chunk)
            if len(received) == 2:  # the first token: the student hangs now
                os.kill(pid, signal.SIGSTOP)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    assert 2 <= len(received) < 40
    row = served.gw.usage_rows("served_by = ? AND status = 502", (served.model,), wait_for=1)[-1]
    assert row["error_code"] == "student_failed" and row["stream"] == 1
    deadline = time.monotonic() + 120
    while ask(served)[1] != served.model:
        assert time.monotonic() < deadline, "the student never came back"
