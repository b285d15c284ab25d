"""OpenTelemetry traces of gateway requests (`[otel] enabled = true`, the `otel` extra), off by default.

When off, nothing here is imported and the request path pays one `is not None` test. When on, each metered
request becomes, once finished, one span named after the OpenTelemetry GenAI conventions
(`{gen_ai.operation.name} {gen_ai.request.model}`, kind SERVER) with child spans:

- `admission`: from arrival to the first student prediction or upstream attempt (parsing, key, limits, budget,
  routing), or to the end when neither was asked (a refused request);
- `student {name}`: a student's prediction (`insource.answered`: whether its answer was served; a cascade or an
  audit may send the request on to the teacher);
- one `{operation} {upstream_model}` CLIENT span per upstream attempt (retries and fallbacks included), until
  the upstream answered (for a stream: until it started), with `error.type` when it failed.

Spans are built after the fact from the request's recorded times (`Outcome.spans`), so nothing is created
while the request runs, and exported by the SDK's batch processor in its own thread to the OTLP/HTTP exporter,
configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_BSP_*` ...). Prompt and answer text are never on a span
unless `[otel] capture_content = true`, and then only for requests whose tenant consented to capture.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from insource.capture.record import CaptureRaw
from insource.config import Config
from insource.errors import ConfigError
from insource.service.request import Attempt, Outcome, RequestFacts

PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai"}  # gen_ai.provider.name values


def make_tracing(cfg: Config, provider_kinds: dict[str, str]) -> Tracing | None:
    """The tracer when `[otel] enabled`, else None; ConfigError when the extra is not installed."""
    if not cfg.otel.enabled:
        return None
    return Tracing(cfg, provider_kinds)


class Tracing:
    def __init__(self, cfg: Config, provider_kinds: dict[str, str], exporter: Any = None) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace import SpanKind
        except ImportError:
            raise ConfigError('[otel] enabled needs the otel extra: pip install "insource[otel]"') from None
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": cfg.otel.service_name}
        self.provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:  # tests hand an in-memory exporter
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("insource")
        self.kinds = provider_kinds
        self.capture_content = cfg.otel.capture_content
        self._server, self._client, self._internal = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL

    def close(self) -> None:
        self.provider.shutdown()  # exports what is still queued

    @staticmethod
    def _ns(facts: RequestFacts, perf: float) -> int:
        return int((facts.ts + (perf - facts.t0)) * 1e9)

    def record(
        self, facts: RequestFacts, outcome: Outcome, cost: float, end: float, capture: CaptureRaw | None = None
    ) -> None:
        """The finished request's spans (`end`: its perf_counter() end time; `cost`: what it was metered at)."""
        from opentelemetry import trace

        operation = "embeddings" if facts.endpoint == "embeddings" else "chat"
        attributes = self._request_attributes(facts, outcome, cost, operation)
        if capture is not None and self.capture_content:
            attributes.update(_content(capture))
        if outcome.status >= 400:
            attributes["error.type"] = outcome.error_code or str(outcome.status)
        name = f"{operation} {facts.model or ''}".strip()
        root = self.tracer.start_span(
            name, kind=self._server, attributes=attributes, start_time=self._ns(facts, facts.t0)
        )
        parent = trace.set_span_in_context(root)
        attempts = outcome.spans or []
        admitted = min((a.start for a in attempts), default=end)
        self._child("admission", facts, facts.t0, admitted, parent, {})
        for attempt in attempts:
            if attempt.student:
                attrs = {
                    "insource.student": attempt.upstream_model,
                    "insource.answered": outcome.served_by == attempt.upstream_model,
                }
                if attempt.error is not None:
                    attrs["error.type"] = attempt.error
                self._child(f"student {attempt.upstream_model}", facts, attempt.start, attempt.end, parent, attrs)
            else:
                self._attempt(facts, operation, attempt, parent)
        root.end(end_time=self._ns(facts, end))

    def _request_attributes(self, facts: RequestFacts, outcome: Outcome, cost: float, operation: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.usage.input_tokens": outcome.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": outcome.usage.completion_tokens,
            "http.response.status_code": outcome.status,
            "insource.request_id": facts.request_id or facts.id,
            "insource.tenant": facts.key.tenant,
            "insource.key_id": facts.key.id,
            "insource.cost_usd": cost,
            "insource.attempts": outcome.attempts,
        }
        optional = {
            "gen_ai.request.model": facts.model,
            "gen_ai.response.model": outcome.upstream_model,
            "gen_ai.provider.name": PROVIDER_NAMES.get(self.kinds.get(outcome.provider or "", ""), outcome.provider),
            "insource.task": facts.task,
            "insource.served_by": outcome.served_by,
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        return attributes

    def _child(self, name: str, facts: RequestFacts, start: float, end: float, parent: Any, attrs: Any) -> Any:
        begin = self._ns(facts, start)
        span = self.tracer.start_span(name, context=parent, kind=self._internal, attributes=attrs, start_time=begin)
        span.end(end_time=self._ns(facts, max(start, end)))
        return span

    def _attempt(self, facts: RequestFacts, operation: str, attempt: Attempt, parent: Any) -> None:
        kind = self.kinds.get(attempt.provider, "")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": attempt.upstream_model,
            "gen_ai.provider.name": PROVIDER_NAMES.get(kind, attempt.provider),
            "insource.provider": attempt.provider,
            "http.response.status_code": attempt.status,
        }
        if attempt.error is not None:
            attributes["error.type"] = attempt.error
        span = self.tracer.start_span(
            f"{operation} {attempt.upstream_model}",
            context=parent,
            kind=self._client,
            attributes=attributes,
            start_time=self._ns(facts, attempt.start),
        )
        span.end(end_time=self._ns(facts, attempt.end))


def _content(capture: CaptureRaw) -> dict[str, str]:
    """Prompt and answer as the GenAI conventions' JSON attributes (only with `capture_content`)."""
    out = {}
    messages = capture.request.get("messages") if isinstance(capture.request, dict) else None
    if isinstance(messages, list):
        out["gen_ai.input.messages"] = orjson.dumps(messages).decode()
    if capture.output is not None:
        answer = [{"role": "assistant", "parts": [{"type": "text", "content": capture.output}]}]
        out["gen_ai.output.messages"] = orjson.dumps(answer).decode()
    return out
