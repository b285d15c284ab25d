#!/usr/bin/env python
"""What traces add to a request's CPU: `Gateway.finish` with `[otel]` off and on (the SDK's batch span processor,
an exporter that drops what it is given), alternating rounds, thread CPU.

Usage::

    python bench/traces_bench.py            # ~15 s
    python bench/traces_bench.py --n 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from insource.config import parse_config
from insource.metering.usage import Usage
from insource.service.keys import KeyInfo
from insource.service.request import Attempt, Outcome, RequestFacts
from insource.service.worker_state import WorkerState

CONFIG = """
[store]
url = "sqlite:///{db}"
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.m]
targets = ["p:up"]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
[otel]
enabled = {enabled}
"""


class Drop(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def gateway(folder: Path, enabled: bool) -> WorkerState:
    text = CONFIG.format(db=folder / f"{enabled}.db", enabled=str(enabled).lower())
    cfg = parse_config(tomllib.loads(text), folder)
    gw = WorkerState(cfg)
    if gw.tracing is not None:  # the real processor, an exporter that sends nowhere
        gw.tracing.provider = TracerProvider()
        gw.tracing.provider.add_span_processor(BatchSpanProcessor(Drop()))
        gw.tracing.tracer = gw.tracing.provider.get_tracer("insource")
    return gw


def one_round(gw: WorkerState, n: int) -> float:
    key = KeyInfo("k1", "t", None, None, None, None, None, False)
    start = time.thread_time()
    for _ in range(n):
        facts = RequestFacts(key, "chat", model="m")
        spans = [Attempt("p", "up", facts.t0 + 0.001, facts.t0 + 0.02)] if gw.tracing is not None else None
        outcome = Outcome(200, None, Usage(120, 0, 30, 0), "p:up", "p", "up", 1, spans=spans)
        gw.finish(facts, outcome)
    return (time.thread_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gws = {enabled: gateway(Path(tmp), enabled) for enabled in (False, True)}
        results: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for enabled, gw in gws.items():
                results[enabled].append(one_round(gw, args.n))
                gw.writer.flush(30)
        for gw in gws.values():
            gw.writer.close()
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"finish() CPU per request, median of {args.rounds} rounds of {args.n}:")
    print(f"  traces off: {off:.1f} us\n  traces on:  {on:.1f} us  (+{on - off:.1f} us)")


if __name__ == "__main__":
    main()
