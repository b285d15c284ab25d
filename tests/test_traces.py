"""Traces: a real `insource serve` with `[otel] enabled` exports OTLP/HTTP to an in-memory collector on
loopback (decoded with opentelemetry-proto), driven by the official openai SDK."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.conftest import UPSTREAM_KEY, Gateway, free_port, gateway_config, start_gateway, stop_gateway

from insource.capture.record import CaptureRaw
from insource.config import Config
from insource.service.keys import KeyInfo
from insource.service.request import Attempt, Outcome, RequestFacts
from insource.service.tracing import Tracing
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SERVER, CLIENT, INTERNAL = 2, 3, 1  # the OTLP span kinds


class Collector:
    """An in-memory OTLP/HTTP trace collector: every span received, as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/traces", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        with self.lock:
            for resource in message.resource_spans:
                service = {a.key: _value(a.value) for a in resource.resource.attributes}.get("service.name")
                for scope in resource.scope_spans:
                    self.spans.extend(_span(s, service) for s in scope.spans)
        return Response(b"", 200, media_type="application/x-protobuf")

    def trace_of(self, request_id: str, timeout: float = 10.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The root span whose insource.request_id is `request_id`, and its children."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                roots = [s for s in self.spans if s["attributes"].get("insource.request_id") == request_id]
                if roots:
                    root = roots[0]
                    children = [s for s in self.spans if s["parent"] == root["span_id"]]
                    if children:
                        return root, children
            time.sleep(0.05)
        raise AssertionError(f"no trace for {request_id}")


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def _span(s: Any, service: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "kind": s.kind,
        "span_id": s.span_id,
        "parent": s.parent_span_id,
        "trace_id": s.trace_id,
        "start": s.start_time_unix_nano,
        "end": s.end_time_unix_nano,
        "attributes": {a.key: _value(a.value) for a in s.attributes},
        "service": service,
    }


@pytest.fixture(scope="module")
def traced(
    upstream: tuple[FakeUpstream, ServerHandle], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Collector]]:
    collector = Collector()
    handle = run_server(collector.app)
    folder = tmp_path_factory.mktemp("traced")
    config = folder / "insource.toml"
    config.write_text(gateway_config(upstream[1].url, f"http://127.0.0.1:{free_port()}") + "\n[otel]\nenabled = true\n")
    env = {
        "LOCAL_UPSTREAM_KEY": UPSTREAM_KEY,
        "TEST_ADMIN_KEY": "adm-1",
        "WRONG_UPSTREAM_KEY": "sk-wrong-Secret-778",
        "OTEL_EXPORTER_OTLP_ENDPOINT": handle.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "gateway-under-test",
    }
    gw = start_gateway(config, env)
    yield gw, collector
    stop_gateway(gw)
    handle.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_request_is_one_server_span_with_admission_and_upstream_children(
    traced: tuple[Gateway, Collector], fake: FakeUpstream
) -> None:
    gw, collector = traced
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key("traced")["key"], max_retries=0)
    secret = f"prompt-text-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": secret}], metadata={"task": "traced-task"}
    )
    answer = raw.parse()
    root, children = collector.trace_of(raw.headers["x-request-id"])
    attrs = root["attributes"]
    assert root["name"] == "chat gpt-4o-mini" and root["kind"] == SERVER and root["service"] == "gateway-under-test"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["insource.task"] == "traced-task"
    assert answer.usage is not None
    assert attrs["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    names = sorted(c["name"] for c in children)
    assert names == ["admission", "chat gpt-4o-mini"]
    attempt = next(c for c in children if c["kind"] == CLIENT)
    admission = next(c for c in children if c["name"] == "admission")
    assert root["start"] <= admission["start"] <= admission["end"] <= attempt["start"] <= attempt["end"] <= root["end"]
    with collector.lock:
        texts = [str(v) for s in collector.spans for v in s["attributes"].values()]
    assert not any(secret in t for t in texts)  # no prompt text unless capture_content


def test_retries_and_fallbacks_are_one_client_span_each(traced: tuple[Gateway, Collector], fake: FakeUpstream) -> None:
    gw, collector = traced
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key("traced")["key"], max_retries=0)
    fake.fail_next(500)
    raw = client.chat.completions.with_raw_response.create(
        model="fallback-mini", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    for _ in raw.parse():
        pass
    root, children = collector.trace_of(raw.headers["x-request-id"])
    attempts = sorted((c for c in children if c["kind"] == CLIENT), key=lambda c: c["start"])
    assert len(attempts) == root["attributes"]["insource.attempts"] >= 3  # dead, flaky (500), flaky again
    assert attempts[0]["attributes"]["insource.provider"] == "dead" and "error.type" in attempts[0]["attributes"]
    assert "error.type" not in attempts[-1]["attributes"]


def test_refused_request_has_an_error_type(traced: tuple[Gateway, Collector]) -> None:
    gw, collector = traced
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key("traced")["key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    root, children = collector.trace_of(caught.value.response.headers["x-request-id"])
    assert root["attributes"]["http.response.status_code"] == 400 and root["attributes"]["error.type"]
    assert [c["name"] for c in children] == ["admission"]


def _finished(cfg: Config) -> tuple[InMemorySpanExporter, Tracing, tuple[RequestFacts, Outcome], CaptureRaw]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(cfg, {"p": "openai"}, exporter=exporter)
    facts = RequestFacts(KeyInfo("k1", "t", None, None, None, None, None, False), "chat", model="m")
    spans = [Attempt("p", "up", facts.t0 + 0.001, facts.t0 + 0.002)]
    outcome = Outcome(served_by="p:up", provider="p", upstream_model="up", spans=spans)
    ctx = facts, outcome
    capture = CaptureRaw(
        id=facts.id, ts=facts.ts, tenant="t", key_id="k1", task=None, model="m", provider="p", upstream_model="up",
        served_by="p:up", terms="self-hosted", consent=True, redact=True, redactors=(),
        request={"messages": [{"role": "user", "content": "the secret question"}]}, output="the answer",
        response=None, upstream_version=None, finish_reason="stop", status=200,
    )  # fmt: skip
    return exporter, tracing, ctx, capture


def test_capture_content_puts_prompt_and_answer_on_the_span() -> None:
    on = Config.model_validate({"otel": {"enabled": True, "capture_content": True}})
    exporter, tracing, (facts, outcome), capture = _finished(on)
    tracing.record(facts, outcome, 0.0, facts.t0 + 0.003, capture)
    root = next(s for s in exporter.get_finished_spans() if s.parent is None)
    assert root.attributes is not None
    assert "the secret question" in str(root.attributes["gen_ai.input.messages"])
    assert "the answer" in str(root.attributes["gen_ai.output.messages"])
    off = Config.model_validate({"otel": {"enabled": True}})
    exporter, tracing, (facts, outcome), capture = _finished(off)
    tracing.record(facts, outcome, 0.0, facts.t0 + 0.003, capture)
    assert all("the secret" not in str(dict(s.attributes or {})) for s in exporter.get_finished_spans())


def test_traces_are_off_by_default_and_import_nothing(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom insource.config import Config\nfrom insource.service.worker_state import WorkerState\n"
        "gw = WorkerState(Config())\nassert gw.tracing is None and not gw.upstreams.trace\n"
        "assert not any(m.startswith('opentelemetry.sdk') for m in sys.modules), 'otel sdk imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)


def test_a_student_prediction_is_its_own_span() -> None:
    exporter, tracing, (facts, _), _ = _finished(Config.model_validate({"otel": {"enabled": True}}))
    student_span = Attempt("insource", "intent@v2", facts.t0 + 0.001, facts.t0 + 0.004, 200, None, True)
    outcome = Outcome(served_by="intent@v2", spans=[student_span])  # what the router's Routing.asked records
    tracing.record(facts, outcome, 0.0, facts.t0 + 0.005)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat m", "admission", "student intent@v2"}
    student = spans["student intent@v2"]
    assert student.attributes is not None and student.attributes["insource.answered"] is True
    assert student.end_time is not None and student.start_time is not None
    assert student.end_time - student.start_time == pytest.approx(3_000_000, rel=0.01)
    admission = spans["admission"]
    assert admission.end_time == student.start_time
